"""DiffusionNFT: negative-aware fine-tuning on the forward process (METHODS.md §4).

Paper: "DiffusionNFT: Online Diffusion Reinforcement with Forward Process", arXiv 2509.16117
(reference code ``NVlabs/DiffusionNFT: scripts/train_nft_sd3.py``). This module holds the pure math the
trainer calls; it never touches models, optimisers or accelerate.

Pieces:

* :func:`nft_optimality` — advantage A → optimality probability r = clip(½ + A/(2·A_max), 0, 1).
* :func:`nft_loss` — the loss for rectified-flow (velocity-predicting) models.
* :func:`nft_loss_vp` — the same loss for VP models (ε-, v- or x0-prediction), via conversions (below).
* :func:`nft_policy_loss_x0` — the policy part written on x̂0 predictions (parameterisation-free core).
* :func:`old_policy_decay` and :func:`ema_update_` — the soft "old" policy θ_old ← d·θ_old + (1−d)·θ.

The loss is affine in r (for fixed θ), so for weights α on the simplex
L(θ; Σ_k α_k r_k) = Σ_k α_k L(θ; r_k) — MARBLE (``marble.py``) relies on it. At θ = θ_old with r = ½
the policy gradient is zero, so r = ½ (A = 0) is the neutral value.

**VP models** (genalign choice, documented): a VP prediction is converted to the flow velocity at the
same SNR (x̂0 and ε̂ are invariant under the flow↔VP mapping, ``conversions.py``): flow time
t = σ_t/(α_t+σ_t), x_flow = x_t/(α_t+σ_t), v = ε̂ − x̂0; then :func:`nft_loss` is applied unchanged.
Because x̂0 is affine in the prediction at fixed x_t, the mixed predictions v^± map to the same mixed
x̂0^± as mixing the VP predictions directly, so this is identical to computing the x̂0 errors of the
native predictions. The reference (KL) term is taken on flow velocities by default
(``kl_space="flow"``) or on the native predictions (``kl_space="native"``); the latter matches how a VP
model is usually regularised. Neither is published for VP models.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch

from genalign.algorithms.conversions import as_float, bcast
from genalign.errors import ConfigError, GenalignError, choices

DECAY_TYPES = (0, 1, 2)
KL_SPACES = ("flow", "native")


def _mean_nonbatch(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def nft_optimality(advantages: torch.Tensor, adv_clip_max: float = 5.0) -> torch.Tensor:
    """r = clip(½ + A/(2·A_max), 0, 1) (DiffusionNFT §4). NaN advantages map to A = 0, i.e. r = ½."""
    if adv_clip_max <= 0:
        raise ConfigError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    a = torch.nan_to_num(as_float(advantages), nan=0.0)
    return (0.5 + a / (2.0 * adv_clip_max)).clamp(0.0, 1.0)


def _adaptive_sq_error(
    pred: torch.Tensor, target: torch.Tensor, min_weight: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ℓ = mean_d (pred − target)² / sg(max(mean_d |pred − target|, min_weight)), the weight in float64.

    Returns (ℓ per sample in float64, the weight per sample)."""
    err = pred - target
    with torch.no_grad():
        w = _mean_nonbatch(err.detach().double().abs()).clamp_min(min_weight)
    sq = _mean_nonbatch(err.double() ** 2)
    return sq / w, w


def nft_policy_loss_x0(
    x0_pos: torch.Tensor,
    x0_neg: torch.Tensor,
    x0: torch.Tensor,
    r: torch.Tensor,
    beta: float,
    adv_clip_max: float = 5.0,
    min_weight: float = 1e-5,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """A_max · mean_i[(r_i ℓ⁺_i + (1−r_i) ℓ⁻_i)/β] from the implicit positive/negative x̂0 predictions.

    ``x0_pos``/``x0_neg`` are x̂0^± (with gradients), ``x0`` the clean rollout sample, ``r`` (N,) the
    optimality probabilities. Each side gets its own stop-gradient adaptive weight (float64).
    """
    if beta <= 0:
        raise ConfigError(f"NFT beta must be > 0, got {beta}")
    if adv_clip_max <= 0:
        raise ConfigError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    x0 = as_float(x0).detach()
    r = as_float(r).detach().reshape(-1).to(x0.device)
    if r.shape[0] != x0.shape[0]:
        raise ValueError(f"r has {r.shape[0]} entries for a batch of {x0.shape[0]}")
    l_pos, w_pos = _adaptive_sq_error(as_float(x0_pos), x0, min_weight)
    l_neg, w_neg = _adaptive_sq_error(as_float(x0_neg), x0, min_weight)
    rd = r.double()
    per_sample = (rd * l_pos + (1.0 - rd) * l_neg) / beta
    loss = (adv_clip_max * per_sample.mean()).float()
    stats = {
        "policy_loss": loss.detach(),
        "loss_pos": l_pos.detach().mean().float(),
        "loss_neg": l_neg.detach().mean().float(),
        "weight_pos": w_pos.mean().float(),
        "weight_neg": w_neg.mean().float(),
        "r_mean": r.mean(),
    }
    return loss, stats


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t,
    r: torch.Tensor,
    beta: float,
    adv_clip_max: float = 5.0,
    v_ref: Optional[torch.Tensor] = None,
    ref_weight: float = 1e-4,
    min_weight: float = 1e-5,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DiffusionNFT loss for a rectified-flow model (arXiv 2509.16117; METHODS §4).

    Args:
        v_theta: the trained policy's velocity at (x_t, t), with gradients.
        v_old: the old (sampling) policy's velocity at the same input; detached here.
        x0: the clean rollout sample; x_t = (1−t)·x0 + t·ε with fresh noise ε (``flow_interpolate``).
        t: flow time(s) in [0, 1], a float or per-sample ``(N,)``.
        r: optimality probabilities ``(N,)`` from :func:`nft_optimality` (or a MARBLE mix).
        beta: NFT guidance strength β (1.0 default in the paper; 0.1 for OCR / multi-reward).
        adv_clip_max: A_max, also the loss scale.
        v_ref: the adapter-disabled base's velocity (detached here); None or ``ref_weight=0`` skips it.
        ref_weight: λ (``train.beta`` in the reference config, 1e-4).

    v⁺ = β·v_θ + (1−β)·sg(v_old), v⁻ = (1+β)·sg(v_old) − β·v_θ, x̂0^± = x_t − t·v^±,
    ℓ^± = mean_d (x̂0^± − x0)² / sg(max(mean_d |x̂0^± − x0|, 1e-5)),
    L = A_max·mean_i[(r_i ℓ⁺_i + (1−r_i) ℓ⁻_i)/β] + λ·mean_i mean_d (v_θ − v_ref)².

    Returns (loss, stats) with detached tensor stats: policy_loss, kl_loss, loss_pos, loss_neg,
    weight_pos, weight_neg, r_mean, x0_mse (of v_θ's own x̂0).
    """
    v_theta = as_float(v_theta)
    v_old = as_float(v_old).detach()
    x_t = as_float(x_t).detach()
    x0 = as_float(x0).detach()
    tt = bcast(t, x_t)
    v_pos = beta * v_theta + (1.0 - beta) * v_old
    v_neg = (1.0 + beta) * v_old - beta * v_theta
    loss, stats = nft_policy_loss_x0(
        x_t - tt * v_pos, x_t - tt * v_neg, x0, r, beta, adv_clip_max=adv_clip_max, min_weight=min_weight
    )
    kl = torch.zeros((), device=loss.device)
    if v_ref is not None and ref_weight > 0:
        kl = _mean_nonbatch((v_theta - as_float(v_ref).detach()) ** 2).mean()
        loss = loss + ref_weight * kl
    with torch.no_grad():
        stats["kl_loss"] = kl.detach()
        stats["x0_mse"] = _mean_nonbatch((x_t - tt * v_theta - x0) ** 2).mean()
    return loss, stats


def nft_loss_vp(
    pred_theta: torch.Tensor,
    pred_old: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar,
    r: torch.Tensor,
    beta: float,
    prediction_type: str = "epsilon",
    adv_clip_max: float = 5.0,
    pred_ref: Optional[torch.Tensor] = None,
    ref_weight: float = 1e-4,
    kl_space: str = "flow",
    min_weight: float = 1e-5,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DiffusionNFT for a VP model (SD1.5/SDXL): predictions converted to the same-SNR flow velocity.

    ``x_t = √ᾱ·x0 + √(1−ᾱ)·ε`` is the VP noisy state, ``alpha_bar`` its ᾱ (float or ``(N,)``), and the
    predictions are the model's native outputs of ``prediction_type`` (``epsilon`` / ``v_prediction`` /
    ``sample``). The policy term equals :func:`nft_loss` on v = ε̂ − x̂0 at flow time σ/(α+σ) and
    x_flow = x_t/(α+σ); see the module docstring. ``kl_space`` picks where λ·mean(·)² is taken:
    ``"flow"`` (flow velocities) or ``"native"`` (the raw model outputs).
    """
    from genalign.models.laws import VP

    return nft_loss_law(VP(prediction_type), pred_theta, pred_old, x0, x_t, alpha_bar, r, beta,
                        adv_clip_max=adv_clip_max, pred_ref=pred_ref, ref_weight=ref_weight, kl_space=kl_space,
                        min_weight=min_weight)


def nft_loss_law(
    law,
    pred_theta: torch.Tensor,
    pred_old: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t,
    r: torch.Tensor,
    beta: float,
    adv_clip_max: float = 5.0,
    pred_ref: Optional[torch.Tensor] = None,
    ref_weight: float = 1e-4,
    kl_space: str = "flow",
    min_weight: float = 1e-5,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DiffusionNFT for a model of any noise law (``genalign.models.laws``; ``t`` in the law's time): the native
    predictions become the same-SNR flow velocity (``law.flow_velocity``) at the flow state ``law.flow_state``
    and :func:`nft_loss` applies unchanged (see the module docstring). For a rectified-flow law both maps are the
    identity, so this is :func:`nft_loss` itself (and both ``kl_space`` values coincide).
    ``kl_space``: λ·mean(·)² on flow velocities (``"flow"``) or on the raw model outputs (``"native"``)."""
    if kl_space not in KL_SPACES:
        raise ConfigError(f"unknown kl_space {kl_space!r}; valid: {choices(KL_SPACES)}")
    x_t = as_float(x_t)
    x_flow, t_flow = law.flow_state(x_t, t)
    v_theta = law.flow_velocity(pred_theta, x_t, t)
    v_old = law.flow_velocity(as_float(pred_old).detach(), x_t, t)
    loss, stats = nft_loss(
        v_theta, v_old, x0, x_flow, t_flow, r, beta, adv_clip_max=adv_clip_max, v_ref=None, min_weight=min_weight
    )
    kl = torch.zeros((), device=loss.device)
    if pred_ref is not None and ref_weight > 0:
        if kl_space == "flow":
            v_ref = law.flow_velocity(as_float(pred_ref).detach(), x_t, t)
            kl = _mean_nonbatch((v_theta - v_ref) ** 2).mean()
        else:
            kl = _mean_nonbatch((as_float(pred_theta) - as_float(pred_ref).detach()) ** 2).mean()
        loss = loss + ref_weight * kl
    stats["kl_loss"] = kl.detach()
    return loss, stats


def old_policy_decay(step: int, decay_type: int) -> float:
    """Decay d for θ_old ← d·θ_old + (1−d)·θ, applied once per epoch (DiffusionNFT, METHODS §4).

    ``step`` is the global optimiser-step counter.
    0: d = 0 (θ_old = θ); 1: d = min(0.001·step, 0.5); 2 (OCR): 0 before step 75, then
    min(0.0075·(step − 75), 0.999).
    """
    if decay_type == 0:
        return 0.0
    if decay_type == 1:
        return min(0.001 * step, 0.5)
    if decay_type == 2:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    raise ConfigError(f"unknown NFT decay_type {decay_type!r}; valid: {choices(DECAY_TYPES)}")


@torch.no_grad()
def ema_update_(old_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """In place: old ← decay·old + (1−decay)·new, for matching sequences of tensors (e.g. LoRA weights)."""
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"EMA decay must be in [0, 1], got {decay}")
    old_params, params = list(old_params), list(params)
    if len(old_params) != len(params):
        raise ValueError(f"ema_update_: {len(old_params)} old tensors vs {len(params)} new tensors")
    for o, p in zip(old_params, params):
        if o.shape != p.shape:
            raise ValueError(f"ema_update_: shape mismatch {tuple(o.shape)} vs {tuple(p.shape)}")
        o.lerp_(p.detach().to(device=o.device, dtype=o.dtype), 1.0 - decay)


# ================================================================================================ trainer glue
# Everything below wires the pure functions above into genalign's trainer through the narrow view
# (genalign/core/view.py): view.generator, view.predict, view.reference(), view.parameters(), view.step_count().

import contextlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, List  # noqa: E402

from genalign.algorithms.advantages import combined_advantages  # noqa: E402
from genalign.algorithms.base import Algorithm  # noqa: E402
from genalign.registry import ALGORITHMS  # noqa: E402

TIMESTEP_SAMPLING = ("schedule", "uniform")
ADV_STDS = ("global", "group", "batch")


from genalign.core.seeding import derive_seed as point_seed  # noqa: E402


@dataclass
class TrainingPoint:
    """Noisy training inputs for one backward unit: x_t from the clean x0 with fresh noise.

    ``t_model`` (N,) is what the denoiser is called with; ``time`` (N,) is the noise law's time (``Generator.law``):
    σ (flow) or ᾱ (VP)."""

    x0: torch.Tensor
    x_t: torch.Tensor
    noise: torch.Tensor
    t_model: torch.Tensor
    time: torch.Tensor


def training_point(gen, schedule, x0: torch.Tensor, seeds: List[int], unit: int, epoch: int = 0,
                   sampling: str = "schedule", t_min: float = 0.0, t_max: float = 1.0) -> TrainingPoint:
    """Draw per-sample timesteps and fresh noise, deterministically from each sample's seed, the unit index and
    the epoch (so a sample gets the same point however the batch is split, and MARBLE's per-reward passes see
    identical inputs).

    ``sampling="schedule"``: unit u of sample i uses step perm_i[u mod T] of the rollout's own schedule (a
    per-sample random permutation, so units cover distinct steps: DiffusionNFT trains at the sampler's
    timesteps). ``"uniform"``: the law's ``sample_training_time`` — flow σ ~ U[t_min, t_max] (timestep 1000·σ); VP:
    a discrete training timestep drawn uniformly from [t_min·N, t_max·N) of the scheduler's N training steps (ᾱ
    from its table).
    """
    n = x0.shape[0]
    dev = x0.device
    idx, u01 = [], []
    T = schedule.num_steps
    for s in seeds:
        g = torch.Generator().manual_seed(point_seed(s, epoch, 17))
        perm = torch.randperm(T, generator=g)
        idx.append(int(perm[unit % T]))
        gu = torch.Generator().manual_seed(point_seed(s, epoch, unit, 19))
        u01.append(float(torch.rand((), generator=gu)))
    noise = torch.stack([
        torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(point_seed(s, epoch, unit, 23)))
        for s in seeds
    ]).to(dev)
    x0 = x0.float()
    if sampling == "schedule":
        j = torch.tensor(idx)
        t_model = schedule.timesteps[j].float()
        time = gen.law.schedule_times(schedule)[j].float()
    else:
        time, t_model = gen.law.sample_training_time(torch.tensor(u01), t_min, t_max)
    time = time.to(dev)
    x_t = gen.law.interpolate(x0, noise, time)
    assert x_t.shape[0] == n
    return TrainingPoint(x0=x0, x_t=x_t, noise=noise, t_model=t_model.to(dev), time=time)


def _floats(stats: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


@ALGORITHMS.register("nft")
@dataclass
class NFT(Algorithm):
    """DiffusionNFT (arXiv 2509.16117; METHODS.md §4) as a genalign algorithm.

    Rollouts: deterministic (ODE / DDIM-η=0), CFG-free by default, sampled by the soft *old* policy θ_old (an EMA
    of the adapter weights kept as a list of tensors and swapped into the trainable parameters under no_grad);
    only the clean x0 and its reward are kept. Training: per trained timestep (a backward unit), fresh noise and
    the loss of :func:`nft_loss` (rectified flow) or :func:`nft_loss_vp` (VP models), with v_old from θ_old and
    v_ref from the adapter-disabled base when ``ref_weight > 0``. After each iteration θ_old ← d·θ_old + (1−d)·θ
    with d from :func:`old_policy_decay`.
    """

    needs_log_probs = False

    beta: float = field(default=1.0, metadata={"help": "NFT guidance strength β (1.0; 0.1 for OCR/multi-reward)."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "A_max: advantage clip and loss scale."})
    adv_std: str = field(default="global", metadata={"help": "Advantage std over: global | group | batch."})
    adv_eps: float = field(default=1e-4, metadata={"help": "Epsilon added to the advantage std."})
    ref_weight: float = field(default=1e-4, metadata={"help": "λ of λ·mean(v_θ − v_ref)² (0 = no reference)."})
    kl_space: str = field(default="flow", metadata={"help": "VP models: reference term on flow velocities | native."})
    decay_type: int = field(default=1, metadata={"help": "Old-policy decay schedule: 0 (θ_old=θ) | 1 | 2 (OCR)."})
    timestep_sampling: str = field(default="schedule", metadata={"help": "Trained timesteps: schedule | uniform."})
    timestep_fraction: float = field(default=0.99, metadata={"help": "Trained units = max(1, int(T·fraction))."})
    num_train_timesteps: Optional[int] = field(default=None, metadata={"help": "Trained units per sample (overrides the fraction)."})
    t_min: float = field(default=0.0, metadata={"help": "timestep_sampling=uniform: lower time bound in [0, 1]."})
    t_max: float = field(default=1.0, metadata={"help": "timestep_sampling=uniform: upper time bound in [0, 1]."})
    rollout_guidance_scale: Optional[float] = field(default=1.0, metadata={"help": "CFG of rollouts (1 = CFG-free; null = sampler's)."})
    rollout_steps: Optional[int] = field(default=None, metadata={"help": "Rollout steps (null = sampler.num_steps)."})
    min_weight: float = field(default=1e-5, metadata={"help": "Floor of the adaptive loss weight."})

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"'algorithm.beta' must be > 0, got {self.beta}")
        if self.adv_clip_max <= 0:
            raise ConfigError(f"'algorithm.adv_clip_max' must be > 0, got {self.adv_clip_max}")
        if self.adv_std not in ADV_STDS:
            raise ConfigError(f"'algorithm.adv_std' is '{self.adv_std}'; valid choices: {choices(ADV_STDS)}")
        if self.ref_weight < 0:
            raise ConfigError(f"'algorithm.ref_weight' must be >= 0, got {self.ref_weight}")
        if self.kl_space not in KL_SPACES:
            raise ConfigError(f"'algorithm.kl_space' is '{self.kl_space}'; valid choices: {choices(KL_SPACES)}")
        if self.decay_type not in DECAY_TYPES:
            raise ConfigError(f"'algorithm.decay_type' is {self.decay_type}; valid choices: {choices(DECAY_TYPES)}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ConfigError(f"'algorithm.timestep_sampling' is '{self.timestep_sampling}'; valid choices: "
                              f"{choices(TIMESTEP_SAMPLING)}")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ConfigError(f"'algorithm.timestep_fraction' must be in (0, 1], got {self.timestep_fraction}")
        if self.num_train_timesteps is not None and self.num_train_timesteps < 1:
            raise ConfigError(f"'algorithm.num_train_timesteps' must be >= 1, got {self.num_train_timesteps}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ConfigError(f"'algorithm.t_min'/'t_max' must satisfy 0 <= t_min < t_max <= 1, got "
                              f"{self.t_min}, {self.t_max}")
        if self.rollout_steps is not None and self.rollout_steps < 1:
            raise ConfigError(f"'algorithm.rollout_steps' must be >= 1, got {self.rollout_steps}")
        self._old: Optional[List[torch.Tensor]] = None
        self._synced_at: int = -1  # optimiser step at which θ_old was last set exactly equal to θ
        self._backup: Optional[List[torch.Tensor]] = None  # θ while θ_old is swapped in for sampling
        self._epoch = 0

    # -------------------------------------------------------------------------------- old policy
    def setup(self, view) -> None:
        if self.ref_weight > 0:
            view.generator.make_reference()

    def after_parts(self, view) -> None:
        self._params = view.parameters("policy")
        self._old = [p.detach().clone().float() for p in self._params]
        self._synced_at = 0

    def _old_is_current(self, view) -> bool:
        return self._synced_at == view.step_count("policy") and self._backup is None

    @torch.no_grad()
    def _load_into_params(self, tensors) -> None:
        for p, t in zip(self._params, tensors):
            p.copy_(t.to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def old_policy(self, view):
        """Within the block the trainable parameters hold θ_old (no copy when θ_old == θ)."""
        if self._old_is_current(view) or self._backup is not None:
            yield
            return
        self._backup = [p.detach().clone() for p in self._params]
        self._load_into_params(self._old)
        try:
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._backup is not None:
            self._load_into_params(self._backup)
            self._backup = None

    def sampling_policy(self, view):
        """Rollouts sample with θ_old (DiffusionNFT's soft old policy)."""
        return self.old_policy(view)

    def rollout_kwargs(self, view, iteration: int) -> Dict[str, Any]:
        kw: Dict[str, Any] = {}
        if self.rollout_guidance_scale is not None:
            kw["guidance_scale"] = float(self.rollout_guidance_scale)
        if self.rollout_steps is not None:
            kw["num_steps"] = int(self.rollout_steps)
        return kw

    def after_iteration(self, view) -> Dict[str, float]:
        self._restore()
        step = view.step_count("policy")
        d = old_policy_decay(step, self.decay_type)
        ema_update_(self._old, self._params, d)
        if d == 0.0:
            self._synced_at = step
        self._epoch += 1
        return {"nft/old_decay": d}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        self._restore()
        sd = {f"old.{i}": t.detach().cpu() for i, t in enumerate(self._old or [])}
        sd["synced_at"] = torch.tensor(self._synced_at)
        sd["epoch"] = torch.tensor(self._epoch)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if self._old is None:
            raise GenalignError("NFT state loaded before setup()")
        olds = [k for k in sd if k.startswith("old.")]
        if len(olds) != len(self._old):
            raise GenalignError(f"NFT old-policy state has {len(olds)} tensors, this model has {len(self._old)}")
        for i in range(len(self._old)):
            t = sd[f"old.{i}"]
            if t.shape != self._old[i].shape:
                raise GenalignError(f"NFT old-policy tensor {i} has shape {tuple(t.shape)}, expected "
                                    f"{tuple(self._old[i].shape)}")
            self._old[i].copy_(t)
        self._synced_at = int(sd.get("synced_at", torch.tensor(-1)))
        self._epoch = int(sd.get("epoch", torch.tensor(0)))

    # -------------------------------------------------------------------------------- advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        self._restore()
        adv, st = combined_advantages(per_reward, weights, group_ids, mode=mode, std=self.adv_std, eps=self.adv_eps,
                                      clip=self.adv_clip_max)
        return adv, {"zero_std_ratio": st["zero_std_ratio"]}, torch.ones(adv.shape[0], dtype=torch.bool)

    # -------------------------------------------------------------------------------- loss
    def units(self, batch, items) -> int:
        if self.num_train_timesteps is not None:
            return int(self.num_train_timesteps)
        return max(1, int(batch.rollout.schedule.num_steps * self.timestep_fraction))

    def predictions(self, view, mb, unit: int, cache: Optional[dict] = None):
        """(point, pred_θ with grad, pred_old, pred_ref or None) for one backward unit of micro-batch ``mb``.

        Old and reference forwards run first (no_grad), before the graph of pred_θ exists. ``cache`` (a dict)
        keeps (pred_old, pred_ref) keyed by the micro-batch seeds and unit, for repeated passes."""
        self._restore()
        gen = view.generator
        x0 = mb.states[:, -1].to(gen.device)
        pt = training_point(gen, mb.schedule, x0, mb.seeds, unit, self._epoch, self.timestep_sampling,
                            self.t_min, self.t_max)
        key = (tuple(mb.seeds), unit)
        same = self._old_is_current(view)
        if cache is not None and key in cache:
            pred_old, pred_ref = cache[key]
        else:
            pred_old = pred_ref = None
            with torch.no_grad():
                if not same:
                    with self.old_policy(view):
                        pred_old = view.predict(pt.x_t, pt.t_model, mb.cond, 1.0).detach()
                if self.ref_weight > 0:
                    with view.reference() as ref:
                        pred_ref = gen.predict(ref, pt.x_t, pt.t_model, mb.cond, 1.0).detach()
        pred = view.predict(pt.x_t, pt.t_model, mb.cond, 1.0)
        if pred_old is None:
            pred_old = pred.detach()
        if cache is not None:
            cache[key] = (pred_old, pred_ref)
        return pt, pred, pred_old, pred_ref

    def loss_from(self, view, pt: TrainingPoint, pred, pred_old, pred_ref, r: torch.Tensor):
        r = r.to(pred.device)
        return nft_loss_law(view.law, pred, pred_old, pt.x0, pt.x_t, pt.time, r, self.beta,
                            adv_clip_max=self.adv_clip_max, pred_ref=pred_ref, ref_weight=self.ref_weight,
                            kl_space=self.kl_space, min_weight=self.min_weight)

    def optimality(self, adv: torch.Tensor, probe: bool) -> List[torch.Tensor]:
        """The optimality probabilities r the loss trains on: one, or one per objective when probing."""
        return [nft_optimality(adv, self.adv_clip_max)]

    def losses(self, view, batch, items):
        mb, adv = self.minibatch(batch, items)
        probe = getattr(view, "probe", False)
        rs = self.optimality(adv, probe)
        for u in range(self.units(batch, items)):
            pt, pred, pred_old, pred_ref = self.predictions(view, mb, u)
            out = []
            for r in rs:
                loss, st = self.loss_from(view, pt, pred, pred_old, pred_ref, r)
                out.append(loss)
                if len(out) == 1:
                    st = _floats(st)
                    st["kl"] = st.pop("kl_loss")
                    first = st
            yield (out if probe else out[0]), first
