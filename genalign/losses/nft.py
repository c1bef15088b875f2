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
from genalign.errors import ConfigError, choices

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
