"""Noise laws: how a model family noises data, what its denoiser predicts and how it is sampled (METHODS.md §1).

A :class:`NoiseLaw` is owned by the model adapter (``Generator.law``; the class is ``Generator.law_class``, which
is readable without loading a model). Algorithms call the law instead of branching on the family, so a family
with another parameterisation is one new law class. Every law speaks in its own *time* ``t``, which is what
``Schedule`` stores for each state and what ``TrainingPoint.time`` holds:

=================  ==============================  ==================================  ===========================
law                time t                          state x_t                           model output
=================  ==============================  ==================================  ===========================
RectifiedFlow      σ ∈ [0, 1] (schedule.sigmas)    (1−σ)·x0 + σ·ε                      v = ε − x0
VP                 ᾱ ∈ (0, 1] (schedule.alphas)    √ᾱ·x0 + √(1−ᾱ)·ε                    ε, v = αε − σx0, or x0
EDM                σ ≥ 0 (schedule.sigmas, VE)     x0 + σ·ε                            F with x̂0 = c_skip·x + c_out·F
=================  ==============================  ==================================  ===========================

Shared vocabulary: ``interpolate`` (forward noising), ``target`` (the regression target of the model output),
``x0_from`` / ``eps_from`` (the data / noise the output implies), ``pred_from`` (the output that implies a given
(x̂0, ε̂)), ``flow_state`` / ``flow_velocity`` (the same-SNR rectified-flow state and velocity, so flow-space losses
apply to any law), ``model_time`` (the value the denoiser is called with), ``sample_training_time`` (a training
time from a uniform draw), ``step_dt`` (|dt| of a schedule step in flow time; 1 for VP) and ``kernel_step`` (one
sampler transition with the configured kernel of ``models/steps.py``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..algorithms.conversions import (PREDICTION_TYPES, as_float, bcast, flow_eps_from_v, flow_interpolate,
                                      flow_target, flow_x0_from_v, vp_alpha_sigma, vp_interpolate,
                                      vp_pred_to_flow_velocity, vp_pred_to_x0_eps, vp_target,
                                      vp_timestep_for_alpha_bar, vp_x0_eps_to_pred)
from ..errors import ConfigError, choices
from . import steps as K


class NoiseLaw:
    """Base class. Subclasses set ``name``, ``kernels`` (the ``sampler.kernel`` values they support; class
    attributes, so ``config.validate`` can check a config without loading a model) and ``default_kernel``."""

    name: str = "base"
    description: str = "base"
    kernels: Tuple[str, ...] = ()
    default_kernel: str = ""

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseLaw":
        """The law of a loaded pipeline's scheduler (its config and tables)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- parameterisation
    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        raise NotImplementedError

    def x0_from(self, pred: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        raise NotImplementedError

    def eps_from(self, pred: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        raise NotImplementedError

    def pred_from(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """The model output that implies (x̂0, ε̂) at time t."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """The regression target of the model output for x_t = interpolate(x0, noise, t)."""
        return self.pred_from(x0, noise, t)

    def flow_state(self, x_t: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_flow, σ_flow): the rectified-flow state with the same (x0, ε), i.e. the same SNR."""
        raise NotImplementedError

    def flow_velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The flow velocity v = ε̂ − x̂0 implied by a model output (invariant under the same-SNR mapping)."""
        return self.eps_from(pred, x_t, t) - self.x0_from(pred, x_t, t)

    # ------------------------------------------------------------------------------------- time
    def model_time(self, t) -> torch.Tensor:
        """The timestep value the denoiser is called with at law time t."""
        raise NotImplementedError

    def model_input(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """The denoiser's input at state x_t (identity unless the law preconditions its input)."""
        return x_t

    def schedule_times(self, schedule) -> torch.Tensor:
        """The law time of each state of a sampling ``Schedule`` (T+1,)."""
        raise NotImplementedError

    def sample_training_time(self, u: torch.Tensor, t_min: float, t_max: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """(time, model time) per sample from uniform draws ``u`` ∈ [0, 1) restricted to the fraction
        [t_min, t_max] of the law's training range (what DiffusionNFT / DRAGON's ``"uniform"`` sampling uses)."""
        raise NotImplementedError

    def step_dt(self, schedule, j: torch.Tensor) -> torch.Tensor:
        """|dt| of step j → j+1 in flow time, per sample (N,). Laws without a flow clock return 1, which makes
        GRPO-Guard's 1/|dt| reweighting and the ``flow_grpo`` KL form (exact KL × |dt|) exact no-ops."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- sampling
    def check_kernel(self, kernel: str) -> None:
        if kernel not in self.kernels:
            raise ConfigError(f"'sampler.kernel' {kernel!r} is not valid for {self.description} models; "
                              f"valid choices: {choices(self.kernels)}")

    def last_step_deterministic(self, kernel: str) -> bool:
        """Whether ``kernel`` has no noise on the final step (so the step is excluded from the stochastic mask)."""
        return False

    def kernel_step(self, out, x, i: int, sch, scfg, stochastic: bool, prev_sample=None, noise=None) -> K.StepOut:
        """One transition from state i to i+1 of ``sch`` with ``scfg.kernel`` (its deterministic form when not
        ``stochastic``)."""
        raise NotImplementedError


# ================================================================================================ rectified flow
class RectifiedFlow(NoiseLaw):
    """x_σ = (1−σ)x0 + σε, target v = ε − x0, model time = N·σ with N = ``num_train_timesteps`` (1000: the
    diffusers convention of SD3 / FLUX). Kernels: Flow-GRPO SDE, DanceGRPO η-SDE, CPS, ODE (METHODS §2)."""

    name = "flow"
    description = "rectified-flow"
    kernels = ("sde", "eta", "cps", "ode")
    default_kernel = "sde"

    def __init__(self, num_train_timesteps: float = 1000.0):
        self.num_train_timesteps = float(num_train_timesteps)

    @classmethod
    def from_scheduler(cls, scheduler) -> "RectifiedFlow":
        return cls(float(scheduler.config.get("num_train_timesteps", 1000) or 1000))

    def interpolate(self, x0, noise, t):
        return flow_interpolate(x0, noise, t)

    def x0_from(self, pred, x_t, t):
        return flow_x0_from_v(x_t, pred, t)

    def eps_from(self, pred, x_t, t):
        return flow_eps_from_v(x_t, pred, t)

    def pred_from(self, x0, eps, t):
        return flow_target(x0, eps)

    def target(self, x0, noise, t):
        return flow_target(x0, noise)

    def flow_state(self, x_t, t):
        return as_float(x_t), t

    def flow_velocity(self, pred, x_t, t):
        return as_float(pred)

    def model_time(self, t):
        return torch.as_tensor(t, dtype=torch.float32) * self.num_train_timesteps

    def schedule_times(self, schedule):
        return schedule.sigmas

    def sample_training_time(self, u, t_min, t_max):
        time = t_min + (t_max - t_min) * u
        return time, time * self.num_train_timesteps

    def step_dt(self, schedule, j):
        s = schedule.sigmas
        return (s[j] - s[j + 1]).abs().float()

    def last_step_deterministic(self, kernel):
        return kernel == "cps"  # σ' = 0: ρ = 0

    def kernel_step(self, out, x, i, sch, scfg, stochastic, prev_sample=None, noise=None):
        return _flow_kernel_step(self, out, x, sch.sigmas[i], sch.sigmas[i + 1], sch.sigmas[1], scfg, stochastic,
                                 prev_sample, noise)


def _flow_kernel_step(law: NoiseLaw, v, x, s, s_next, s_one, scfg, stochastic, prev_sample, noise) -> K.StepOut:
    """The flow kernels on flow-time states (σ = s → s_next; ``s_one`` = σ_1, the σ = 1 guard of the SDE)."""
    if not stochastic:
        return K.flow_ode_step(v, x, s, s_next)
    if scfg.kernel == "sde":
        return K.flow_sde_step(v, x, s, s_next, scfg.noise_level, sigma_for_one=s_one, prev_sample=prev_sample,
                               noise=noise, reduce=scfg.logprob_reduce)
    if scfg.kernel == "eta":
        return K.flow_eta_step(v, x, s, s_next, scfg.eta, prev_sample=prev_sample, noise=noise,
                               reduce=scfg.logprob_reduce)
    if scfg.kernel == "cps":
        return K.flow_cps_step(v, x, s, s_next, scfg.noise_level, logprob=scfg.cps_logprob, prev_sample=prev_sample,
                               noise=noise, reduce=scfg.logprob_reduce)
    law.check_kernel(scfg.kernel)
    raise ConfigError(f"'sampler.kernel' {scfg.kernel!r} is deterministic: it has no stochastic {law.description} "
                      f"step (log-probabilities need one of: {choices(k for k in law.kernels if k != 'ode')})")


# ================================================================================================ VP diffusion
class VP(NoiseLaw):
    """x_t = α_t x0 + σ_t ε with α_t = √ᾱ_t, σ_t = √(1−ᾱ_t); law time t = ᾱ. ``prediction_type`` in the diffusers
    names ``epsilon`` / ``v_prediction`` (v = α_t ε − σ_t x0) / ``sample`` (x0). ``alphas_cumprod`` is the
    scheduler's ᾱ table over its N training timesteps (needed only by ``model_time`` and ``sample_training_time``).
    Kernels: DDIM with η (DDPO, METHODS §2e) and its η = 0 form ``ode``."""

    name = "vp"
    description = "VP-diffusion"
    kernels = ("ddim", "ode")
    default_kernel = "ddim"

    def __init__(self, prediction_type: str = "epsilon", alphas_cumprod: Optional[torch.Tensor] = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid choices: {choices(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.alphas_cumprod = None if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).float()

    @classmethod
    def from_scheduler(cls, scheduler) -> "VP":
        return cls(scheduler.config.get("prediction_type", "epsilon"), scheduler.alphas_cumprod)

    def _table(self) -> torch.Tensor:
        if self.alphas_cumprod is None:
            raise ConfigError("this VP noise law has no ᾱ table (alphas_cumprod); build it from the scheduler")
        return self.alphas_cumprod

    def interpolate(self, x0, noise, t):
        a, s = vp_alpha_sigma(t)
        return vp_interpolate(x0, noise, a, s)

    def x0_from(self, pred, x_t, t):
        a, s = vp_alpha_sigma(t)
        return vp_pred_to_x0_eps(pred, x_t, a, s, self.prediction_type)[0]

    def eps_from(self, pred, x_t, t):
        a, s = vp_alpha_sigma(t)
        return vp_pred_to_x0_eps(pred, x_t, a, s, self.prediction_type)[1]

    def pred_from(self, x0, eps, t):
        a, s = vp_alpha_sigma(t)
        return vp_x0_eps_to_pred(x0, eps, a, s, self.prediction_type)

    def target(self, x0, noise, t):
        a, s = vp_alpha_sigma(t)
        return vp_target(x0, noise, a, s, self.prediction_type)

    def flow_state(self, x_t, t):
        """σ_flow = σ_t/(α_t+σ_t), x_flow = x_t/(α_t+σ_t) (METHODS §1, flow ↔ VP)."""
        a, s = vp_alpha_sigma(torch.as_tensor(t, device=x_t.device))
        return x_t / bcast(a + s, x_t), s / (a + s)

    def flow_velocity(self, pred, x_t, t):
        return vp_pred_to_flow_velocity(pred, x_t, t, self.prediction_type)

    def model_time(self, t):
        """The (fractional) training timestep whose ᾱ is t, interpolated in log-SNR; round for integer UNets."""
        return vp_timestep_for_alpha_bar(self._table(), t).float()

    def schedule_times(self, schedule):
        return schedule.alphas

    def sample_training_time(self, u, t_min, t_max):
        """A discrete training timestep uniform in [t_min·N, t_max·N) of the N training steps; ᾱ from the table."""
        ac = self._table()
        n = ac.shape[0]
        lo, hi = int(t_min * n), max(int(t_min * n) + 1, int(round(t_max * n)))
        t_int = (lo + (u * (hi - lo)).long()).clamp(0, n - 1)
        return ac[t_int], t_int.float()

    def step_dt(self, schedule, j):
        return torch.ones(j.shape[0])

    def kernel_step(self, out, x, i, sch, scfg, stochastic, prev_sample=None, noise=None):
        a, a_prev = sch.alphas[i], sch.alphas[i + 1]
        self.check_kernel(scfg.kernel)
        eta = scfg.eta if stochastic else 0.0
        pred_type = self.prediction_type
        if pred_type == "sample":  # DDIM takes ε or v: hand it the ε this x0 implies (the same x̂0 and ε̂)
            out, pred_type = self.eps_from(out, x.float(), a), "epsilon"
        return K.ddim_step(out, x, a, a_prev, eta, prediction_type=pred_type, prev_sample=prev_sample, noise=noise,
                           reduce=scfg.logprob_reduce)


# ================================================================================================ EDM (Stable Audio)
class EDM(NoiseLaw):
    """EDM / variance-exploding law of Stable Audio Open (METHODS §14; diffusers
    ``CosineDPMSolverMultistepScheduler``): x_σ = x0 + σε (law time t = σ ≥ 0), preconditioning with σ_d =
    ``sigma_data`` (1 for Stable Audio Open 1.0):

        c_skip = σ_d²/(σ²+σ_d²),  c_out = −σσ_d/√(σ²+σ_d²) (v-prediction),  c_in = 1/√(σ²+σ_d²),
        model time c_noise = atan(σ)·2/π,  x̂0 = c_skip·x + c_out·F.

    The target F = (σ_d²ε − σx0)/(σ_d√(σ²+σ_d²)) is the v of stable-audio-tools (cos·ε − sin·x0 with
    t = atan(σ)·2/π) when σ_d = 1. ``model_input`` applies c_in; an adapter calls it in its ``model_forward``.

    Sampling: ``ddim`` (default) is METHODS §14's variance-exploding DDIM-η step (``steps.ve_eta_step``; η = 1 is
    the pipeline's first-order step, so roll out with ``sampler.eta`` 1; η = 0 the deterministic step
    x' = x̂0 + σ'·ε̂), with the native Gaussian log-density.
    **[R]** ``sde`` / ``eta`` / ``cps`` / ``ode``: the flow kernels applied in the exact flow coordinates of METHODS
    §14 (σ_f = σ/(1+σ), x_f = x/(1+σ), v_f = ε̂ − x̂0). ``prev_sample``, ``mean`` and ``std`` of a step are
    returned in native coordinates (x = x_f/(1−σ_f)); ``log_prob`` is the flow-coordinate value, which differs
    from the native density by a constant of the step (the Jacobian), so every ratio between policies is exact.
    Their deterministic step (the flow Euler step) is the same x̂0 + σ'·ε̂.
    **[R] training time**: t ~ U[t_min, t_max], σ = tan(tπ/2) (stable-audio-tools' uniform t; model time t).
    """

    name = "edm"
    description = "EDM (v-prediction)"
    kernels = ("ddim", "sde", "eta", "cps", "ode")
    default_kernel = "ddim"

    def __init__(self, prediction: str = "v", sigma_data: float = 1.0):
        if prediction not in ("v", "v_prediction"):
            raise ConfigError(f"EDM prediction {prediction!r} is not supported; valid choices: v, v_prediction")
        if sigma_data <= 0:
            raise ConfigError(f"EDM sigma_data must be > 0, got {sigma_data}")
        self.prediction_type = "v_prediction"
        self.sigma_data = float(sigma_data)

    @classmethod
    def from_scheduler(cls, scheduler) -> "EDM":
        return cls(scheduler.config.get("prediction_type", "v_prediction"), scheduler.config.get("sigma_data", 1.0))

    def preconditioning(self, sigma) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at σ."""
        s = torch.as_tensor(sigma)
        s = s.double() if s.dtype == torch.float64 else s.float()
        sd = self.sigma_data
        root = torch.sqrt(s**2 + sd**2)
        return sd**2 / (s**2 + sd**2), -s * sd / root, 1 / root, torch.atan(s) * 2 / math.pi

    def interpolate(self, x0, noise, t):
        x0, noise = as_float(x0), as_float(noise)
        return x0 + bcast(t, x0) * noise

    def x0_from(self, pred, x_t, t):
        pred, x_t = as_float(pred), as_float(x_t)
        c_skip, c_out, _, _ = self.preconditioning(t)
        return bcast(c_skip, x_t) * x_t + bcast(c_out, x_t) * pred

    def eps_from(self, pred, x_t, t):
        """ε̂ = (x − x̂0)/σ = σx/(σ²+σ_d²) + σ_d F/√(σ²+σ_d²) (finite at σ = 0)."""
        pred, x_t = as_float(pred), as_float(x_t)
        s = bcast(t, x_t)
        sd = self.sigma_data
        return s * x_t / (s**2 + sd**2) + sd * pred / torch.sqrt(s**2 + sd**2)

    def pred_from(self, x0, eps, t):
        x0, eps = as_float(x0), as_float(eps)
        s = bcast(t, x0)
        sd = self.sigma_data
        return (sd**2 * eps - s * x0) / (sd * torch.sqrt(s**2 + sd**2))

    def flow_state(self, x_t, t):
        s = torch.as_tensor(t, device=x_t.device)
        return as_float(x_t) / bcast(1 + s, as_float(x_t)), s / (1 + s)

    def model_time(self, t):
        return self.preconditioning(t)[3]

    def model_input(self, x_t, t):
        return as_float(x_t) * bcast(self.preconditioning(t)[2], as_float(x_t))

    def schedule_times(self, schedule):
        return schedule.sigmas

    def sample_training_time(self, u, t_min, t_max):
        t = t_min + (t_max - t_min) * u
        return torch.tan(t * math.pi / 2), t

    def step_dt(self, schedule, j):
        f = schedule.sigmas / (1 + schedule.sigmas)
        return (f[j] - f[j + 1]).abs().float()

    def last_step_deterministic(self, kernel):
        return kernel in ("cps", "ddim")  # σ' = 0: ρ = 0

    def kernel_step(self, out, x, i, sch, scfg, stochastic, prev_sample=None, noise=None):
        s, s_next = sch.sigmas[i].float(), sch.sigmas[i + 1].float()
        x = x.float()
        self.check_kernel(scfg.kernel)
        if scfg.kernel == "ddim":
            return K.ve_eta_step(self.x0_from(out, x, s), x, s, s_next, scfg.eta if stochastic else 0.0,
                                 prev_sample=prev_sample, noise=noise, reduce=scfg.logprob_reduce)
        x_f, f = self.flow_state(x, s)
        f_next, f_one = s_next / (1 + s_next), sch.sigmas[1].float() / (1 + sch.sigmas[1].float())
        v_f = self.flow_velocity(out, x, s)
        prev_f = None if prev_sample is None else prev_sample.float() / (1 + s_next)
        st = _flow_kernel_step(self, v_f, x_f, f, f_next, f_one, scfg, stochastic, prev_f, noise)
        scale = 1 + s_next.to(x.device)
        return K.StepOut(st.prev_sample * scale, st.mean * scale, st.std * scale, st.log_prob)
