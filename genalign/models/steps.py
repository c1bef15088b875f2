"""Pure per-step transition kernels with log-probabilities (METHODS.md §2).

Every kernel computes in float32 (bf16 overflows in the mean), takes the model output for the current
state and returns a :class:`StepOut` with the next state, the transition mean, its std, and the
log-probability of the next state under the Gaussian transition.

Log-prob reduction over the non-batch dimensions is an explicit argument ``reduce``:
``"mean"`` (default, what every reference implementation does: the PPO ratio becomes a per-element
geometric mean, hence clip ranges of 1e-4) or ``"sum"`` (the true log density: a mean-clip ε corresponds
to a sum-clip ≈ D·ε, and KL weights must be divided by D).

Rectified flow: x_σ = (1−σ)x0 + σε, v = ε − x0, samplers walk σ from 1 to 0 with dt = σ' − σ < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

LOG_2PI = math.log(2 * math.pi)


@dataclass
class StepOut:
    prev_sample: torch.Tensor  # x' (the next, less noisy state)
    mean: torch.Tensor  # μ of the transition
    std: torch.Tensor  # per-sample std of the transition, shape (N,) (0 for deterministic steps)
    log_prob: Optional[torch.Tensor]  # (N,) or None for deterministic steps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32, device=like.device)
    if v.ndim == 0:
        v = v.expand(like.shape[0])
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _per_sample(v, n: int, device) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32, device=device)
    return v.expand(n).clone() if v.ndim == 0 else v.reshape(n)


def reduce_dims(x: torch.Tensor, reduce: str) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    if reduce == "mean":
        return x.mean(dim=dims)
    if reduce == "sum":
        return x.sum(dim=dims)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """log N(x; mean, std²) per element, reduced over non-batch dims. ``std`` broadcasts (per sample)."""
    x, mean = x.float(), mean.float()
    std = _bcast(std, x) if std.ndim <= 1 else std.float()
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * LOG_2PI
    return reduce_dims(lp, reduce)


def _finish(x_prev_given, mean, std_scalar, noise, generator, reduce, deterministic_ok=False):
    """Sample (or take the given) next state and its log-prob."""
    n = mean.shape[0]
    std = _per_sample(std_scalar, n, mean.device)
    if x_prev_given is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        x_prev = mean + _bcast(std, mean) * noise.float()
    else:
        x_prev = x_prev_given.float()
    if torch.any(std <= 0):
        if not deterministic_ok:
            raise ValueError("transition std is 0: a deterministic step has no log-probability")
        return StepOut(x_prev, mean, std, None)
    return StepOut(x_prev, mean, std, gaussian_log_prob(x_prev, mean, std, reduce))


# ------------------------------------------------------------------------------------------------------
# (a) Flow-GRPO SDE  (Liu et al., Flow-GRPO, arXiv 2505.05470, Eq. 9–10)


def flow_sde_std(sigma, sigma_max_neighbour, noise_level: float) -> torch.Tensor:
    """s_t = a·sqrt(σ/(1−σ)); at σ = 1 the denominator uses 1 − σ_1 (the next sigma of the schedule)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    denom_sigma = torch.where(sigma >= 1.0, torch.as_tensor(sigma_max_neighbour, dtype=torch.float32), sigma)
    return noise_level * torch.sqrt(sigma / (1 - denom_sigma))


def flow_sde_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float = 0.7,
    *,
    sigma_for_one=None,
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduce: str = "mean",
) -> StepOut:
    """Euler–Maruyama step of dx = [v − ½s_t²·score]dt + s_t dw (marginals equal the ODE's).

    μ = x·(1 + s_t²·dt/(2σ)) + v·(1 + s_t²(1−σ)/(2σ))·dt;  x' = μ + s_t·sqrt(|dt|)·z.
    ``sigma_for_one`` is the sigma used in s_t's denominator when σ = 1 (default: ``sigma_next``).
    """
    v, x = model_output.float(), sample.float()
    sigma_t = _bcast(sigma, x)
    sigma_n = _bcast(sigma_next, x)
    dt = sigma_n - sigma_t
    s1 = sigma_next if sigma_for_one is None else sigma_for_one
    s_t = _bcast(flow_sde_std(torch.as_tensor(sigma, dtype=torch.float32).to(x.device), torch.as_tensor(s1, dtype=torch.float32).to(x.device), noise_level), x)
    mean = x * (1 + s_t**2 / (2 * sigma_t) * dt) + v * (1 + s_t**2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    std = (s_t * torch.sqrt(-dt)).reshape(-1)
    return _finish(prev_sample, mean, std, noise, generator, reduce)


# ------------------------------------------------------------------------------------------------------
# (b) Constant-η SDE  (DanceGRPO, arXiv 2505.07818)


def flow_eta_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma,
    sigma_next,
    eta: float = 0.3,
    *,
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduce: str = "mean",
) -> StepOut:
    """μ = x + dt·(v − ½η²·score), score = −(x − (1−σ)x̂0)/σ², x̂0 = x − σv;  std = η·sqrt(|dt|)."""
    v, x = model_output.float(), sample.float()
    sigma_t = _bcast(sigma, x)
    dt = _bcast(sigma_next, x) - sigma_t
    x0 = x - sigma_t * v
    score = -(x - (1 - sigma_t) * x0) / sigma_t**2
    mean = x + dt * (v - 0.5 * eta**2 * score)
    std = (eta * torch.sqrt(-dt)).reshape(-1)
    return _finish(prev_sample, mean, std, noise, generator, reduce)


# ------------------------------------------------------------------------------------------------------
# (c) CPS: coefficients-preserving sampling (arXiv 2509.05952)


def flow_cps_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float = 0.8,
    *,
    logprob: str = "simplified",
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduce: str = "mean",
) -> StepOut:
    """ρ = σ'·sin(aπ/2); μ = (1−σ')x̂0 + σ'·cos(aπ/2)·ε̂; x' = μ + ρz. The last step (σ'=0) is deterministic.

    ``logprob="simplified"`` returns −reduce((x'−μ)²) as the reference code does — not a likelihood (ratio
    scales vary with ρ); ``"gaussian"`` returns the true Gaussian log density.
    """
    v, x = model_output.float(), sample.float()
    sigma_t = _bcast(sigma, x)
    sigma_n = _bcast(sigma_next, x)
    x0 = x - sigma_t * v
    eps = x + (1 - sigma_t) * v
    rho = sigma_n * math.sin(noise_level * math.pi / 2)
    mean = (1 - sigma_n) * x0 + sigma_n * math.cos(noise_level * math.pi / 2) * eps
    std = rho.reshape(-1)
    out = _finish(prev_sample, mean, std, noise, generator, reduce, deterministic_ok=True)
    if out.log_prob is not None and logprob == "simplified":
        out.log_prob = -reduce_dims((out.prev_sample - mean) ** 2, reduce)
    elif logprob not in ("simplified", "gaussian"):
        raise ValueError(f"cps logprob must be 'simplified' or 'gaussian', got {logprob!r}")
    return out


# ------------------------------------------------------------------------------------------------------
# (d) ODE (Euler)


def flow_ode_step(model_output: torch.Tensor, sample: torch.Tensor, sigma, sigma_next) -> StepOut:
    """x' = x + dt·v. Deterministic: log_prob is None."""
    x = sample.float()
    dt = _bcast(sigma_next, x) - _bcast(sigma, x)
    mean = x + dt * model_output.float()
    return StepOut(mean, mean, torch.zeros(x.shape[0], device=x.device), None)


# ------------------------------------------------------------------------------------------------------
# (e) DDIM with η  (DDPO, Black et al., arXiv 2305.13301; DDIM, Song et al., Eq. 12)


def ddim_step(
    eps: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t,
    alpha_prod_prev,
    eta: float = 1.0,
    *,
    prediction_type: str = "epsilon",
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduce: str = "mean",
) -> StepOut:
    """x̂0 = (x_t − sqrt(1−ᾱ_t)ε)/sqrt(ᾱ_t);  σ_t = η·sqrt((1−ᾱ_{t−1})/(1−ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_{t−1});
    μ = sqrt(ᾱ_{t−1})·x̂0 + sqrt(1−ᾱ_{t−1}−σ_t²)·ε;  x_{t−1} = μ + σ_t z.

    ``prediction_type`` "v_prediction" converts v to ε first (METHODS.md §1 table). η = 0 is deterministic.
    """
    x = sample.float()
    a_t = _bcast(alpha_prod_t, x)
    a_prev = _bcast(alpha_prod_prev, x)
    out = eps.float()
    if prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        out = (1 - a_t).sqrt() * x + a_t.sqrt() * out
    elif prediction_type == "epsilon":
        x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std_t = eta * var.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std_t**2).clamp(min=0).sqrt() * out
    return _finish(prev_sample, mean, std_t.reshape(-1), noise, generator, reduce, deterministic_ok=eta == 0)


# ------------------------------------------------------------------------------------------------------
# (f) Variance-exploding DDIM with η  (Stable Audio's EDM law, METHODS.md §14)


def ve_eta_step(
    x0_pred: torch.Tensor,
    sample: torch.Tensor,
    sigma,
    sigma_next,
    eta: float = 1.0,
    *,
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduce: str = "mean",
) -> StepOut:
    """From x = x0 + σε to σ' given the model's x̂0: ρ = η·σ'·√(1 − σ'²/σ²); μ = x̂0 + √(σ'² − ρ²)·(x − x̂0)/σ;
    x' = μ + ρz. η = 1 is the first-order (SDE-DPM-Solver++) step of ``CosineDPMSolverMultistepScheduler``;
    η = 0 the deterministic DDIM step; σ' = 0 gives x̂0 (deterministic, no log-prob)."""
    x0, x = x0_pred.float(), sample.float()
    s, s_next = _bcast(sigma, x), _bcast(sigma_next, x)
    rho = eta * s_next * (1 - s_next**2 / s**2).clamp(min=0).sqrt()
    mean = x0 + (s_next**2 - rho**2).clamp(min=0).sqrt() * (x - x0) / s
    return _finish(prev_sample, mean, rho.reshape(-1), noise, generator, reduce, deterministic_ok=True)
