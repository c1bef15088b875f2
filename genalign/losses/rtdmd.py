"""RTDMD (reward-tilted DMD) as pure tensor functions (METHODS.md §9).

Source: "RTDMD", arXiv 2605.26108; facts checked against ``Harahan/RTDMD: rtdmd/trainers/ac_dmd_utils.py,
ac_dmd_mixin.py, grpo_trainer.py, bp_mixin.py``. Rectified flow throughout: x_σ = (1−σ)x0 + σε, v = ε − x0;
all times here are flow sigmas in [0, 1] (the caller maps model timesteps ↔ sigmas, with its scheduler shift).

Stage 1 (AC-DMD), per generator iteration, the caller:
1. backward-simulates to a boundary state x_s at σ_s (``dmd.backward_simulation_plan``);
2. draws t (:func:`sample_ac_timesteps`, model-timestep units) and ξ, forms x_t = :func:`subinterval_renoise`;
3. generator: teacher (CFG) and fake score predict v at (x_t, t); both are CPS-stepped back to σ_s with the
   **same** noise ξ′ (``genalign.models.steps.flow_cps_step(v, x_t, σ_t, σ_s, 0.9, noise=ξ′).prev_sample``);
   ``loss, g = ac_dmd_loss(x_s, x_s_real, x_s_fake)``;
4. fake score: :func:`ac_fake_loss` + 0.01·:func:`consistency_two_sample_loss`.
Stage 2: :func:`subgrpo_advantages`, :func:`subgrpo_steps`, and on the deterministic last step
``1e-3·L_AC-DMD + 1e-4·reward_hinge_loss(weighted_reward(...))`` (:func:`rtdmd_last_step_loss`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from genalign.algorithms import conversions as cv
from genalign.algorithms.advantages import group_advantages

from .dmd import _check_same_shape, dmd_loss

# Rescaling of the differentiable rewards to O(1) in R_w (``bp_mixin.py``): CLIPScore/100, PickScore/26, raw HPSv2.
RTDMD_BP_REWARD_SCALES = {"clipscore": 1 / 100, "pickscore": 1 / 26, "hpsv2": 1.0}


def _col(v, like: torch.Tensor) -> torch.Tensor:
    return cv.bcast(v, like)


# ------------------------------------------------------------------------------ sub-interval re-noising
def subinterval_coefficients(sigma_s, sigma_t) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, σ_ts) of the flow transition from σ_s to σ_t > σ_s: x_t = a·x_s + σ_ts·ξ with a = (1−t)/(1−s) and
    σ_ts² = t² − a²s² (clamped at 1e-12 as in ``flow_forward_v2``). Exact: it composes with x_s = (1−s)x0 + sε
    into the flow marginal at t."""
    s = torch.as_tensor(sigma_s, dtype=torch.float64)
    t = torch.as_tensor(sigma_t, dtype=torch.float64)
    if torch.any(s >= 1) or torch.any(t < s):
        raise ValueError("sub-interval needs 0 <= sigma_s < 1 and sigma_t >= sigma_s")
    a = (1 - t) / (1 - s)
    return a, torch.sqrt(torch.clamp(t**2 - a**2 * s**2, min=1e-12))


def subinterval_renoise(x_s: torch.Tensor, sigma_s, sigma_t, noise: torch.Tensor) -> torch.Tensor:
    """x_t = a·x_s + σ_ts·ξ (RTDMD stage 1, step 2)."""
    _check_same_shape(x_s=x_s, noise=noise)
    a, sig = subinterval_coefficients(sigma_s, sigma_t)
    x = cv.as_float(x_s)
    return _col(a, x) * x + _col(sig, x) * cv.as_float(noise)


def ac_fake_target(x_s: torch.Tensor, sigma_s, sigma_t, noise: torch.Tensor) -> torch.Tensor:
    """Ambient-DSM velocity target v* = −x_s/(1−s) + [(t + (1−t)s²/(1−s)²)/σ_ts]·ξ (``flow_forward_target_v2``).
    At s = 0 (x_s = x0): a = 1−t, σ_ts = t, so v* = ξ − x0, the ordinary flow target."""
    _check_same_shape(x_s=x_s, noise=noise)
    s = torch.as_tensor(sigma_s, dtype=torch.float64)
    t = torch.as_tensor(sigma_t, dtype=torch.float64)
    _, sig = subinterval_coefficients(s, t)
    x = cv.as_float(x_s)
    return _col(-1 / (1 - s), x) * x + _col((t + (1 - t) * s**2 / (1 - s) ** 2) / sig, x) * cv.as_float(noise)


def ac_fake_weight(sigma_s, sigma_t, max_weight: float = 10.0) -> torch.Tensor:
    """clamp(1/σ_ts², 0, max_weight) (``compute_inverse_scale_weight``, clamp 0..10 in every shipped config)."""
    _, sig = subinterval_coefficients(sigma_s, sigma_t)
    return torch.clamp(1 / sig**2, 0.0, max_weight)


def ac_fake_loss(
    v_pred: torch.Tensor, x_s: torch.Tensor, sigma_s, sigma_t, noise: torch.Tensor,
    move_scale_out: bool = True, max_weight: float = 10.0,
) -> torch.Tensor:
    """AC-DMD fake-score loss at x_t = :func:`subinterval_renoise` (x_s, s, t, ξ).

    ``move_scale_out=True`` (every shipped config): mean[clamp(1/σ_ts², 0, 10)·(σ_ts·v_φ − σ_ts·v*)²], i.e.
    min(1, 10σ_ts²)·‖v_φ − v*‖² per sample. ``False``: plain mean (v_φ − v*)²."""
    _check_same_shape(v_pred=v_pred, x_s=x_s)
    target = ac_fake_target(x_s, sigma_s, sigma_t, noise).detach()
    v = cv.as_float(v_pred)
    if not move_scale_out:
        return ((v - target) ** 2).mean()
    _, sig = subinterval_coefficients(sigma_s, sigma_t)
    w = ac_fake_weight(sigma_s, sigma_t, max_weight)
    sig, w = _col(sig, v), _col(w, v)
    return (w * (sig * v - sig * target) ** 2).mean()


def sample_ac_timesteps(
    t_s: torch.Tensor, generator: Optional[torch.Generator] = None, offset: float = 10.0, end: float = 1000.0,
    min_step: float = 20.0, max_step: float = 980.0,
) -> torch.Tensor:
    """t ~ U[t_s + offset, max(end, t_s + offset + 1)], clamped to [min_step, max_step] (model-timestep units;
    ``_sample_ac_timesteps``). ``t_s`` (N,) is the boundary's model timestep."""
    start = torch.as_tensor(t_s, dtype=torch.float32) + offset
    stop = torch.maximum(torch.full_like(start, float(end)), start + 1.0)
    u = torch.rand(start.shape, generator=generator).to(start.device)
    return torch.clamp(start + u * (stop - start), min_step, max_step)


def ac_dmd_loss(
    x_s: torch.Tensor, x_s_real: torch.Tensor, x_s_fake: torch.Tensor, normaliser_eps: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """AC-DMD generator loss: ½·MSE(x_s, sg(x_s − g)), g = (x_s^fake − x_s^real)/mean|x_s − x_s^real|, where
    x_s^real / x_s^fake are the teacher's / fake score's predictions CPS-stepped from (x_t, t) back to σ_s with the
    same noise ξ′. Same maths as ``dmd_loss`` with boundary states in place of x̂0. Returns (loss, g)."""
    return dmd_loss(x_s, x_s_real, x_s_fake, normaliser_eps)


# ----------------------------------------------------------------------------- consistency regulariser
def consistency_h(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """h(x, τ) = x − σ_τ·v_φ(x, τ), the fake score's x̂0."""
    _check_same_shape(x=x, v=v)
    return cv.flow_x0_from_v(x, v, sigma)


def consistency_two_sample_loss(h_anchor: torch.Tensor, h_1: torch.Tensor, h_2: torch.Tensor) -> torch.Tensor:
    """L_cons = mean[(h(x'_1, t') − h_a)·(h(x'_2, t') − h_a)] (``_compute_ac_consistency_loss``, two-sample mode).

    x'_1, x'_2 are two independent stop-gradient CPS steps from (x_t, t) to t' sharing t' and the anchor's
    detached prediction. Because h_1, h_2 are i.i.d. given (x_t, t), E[(h_1 − a)(h_2 − a)] = (E h' − a)²
    elementwise: an unbiased estimate of ‖E h' − h_a‖² (the one-sample MSE adds Var h'). The anchor
    h_a = h(x_t, t) keeps its gradient; non-finite results become 0 as in the reference."""
    _check_same_shape(h_anchor=h_anchor, h_1=h_1, h_2=h_2)
    a = cv.as_float(h_anchor)
    loss = ((cv.as_float(h_1) - a) * (cv.as_float(h_2) - a)).flatten(1).mean(1).mean()
    return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)


def sample_consistency_timesteps(
    t: torch.Tensor, generator: Optional[torch.Generator] = None, max_delta: int = 200
) -> torch.Tensor:
    """t' = max(t − Δ, 0), Δ ~ U{1..max_delta} per sample (model-timestep units)."""
    if max_delta < 1:
        raise ValueError(f"max_delta must be >= 1, got {max_delta}")
    t = torch.as_tensor(t, dtype=torch.float32)
    delta = torch.randint(1, max_delta + 1, t.shape, generator=generator).to(t.device)
    return torch.clamp(t - delta.float(), min=0.0)


# ------------------------------------------------------------------------------------------- stage 2
def weighted_reward(per_reward: torch.Tensor, weights: Sequence[float], scales: Optional[Sequence[float]] = None):
    """R_w = Σ_k w_k·c_k·r_k over (N, K) differentiable rewards (c_k: e.g. :data:`RTDMD_BP_REWARD_SCALES`)."""
    if per_reward.ndim != 2 or per_reward.shape[1] != len(weights):
        raise ValueError(f"per_reward must be (N, {len(weights)}), got {tuple(per_reward.shape)}")
    w = torch.as_tensor(list(weights), dtype=per_reward.dtype, device=per_reward.device)
    if scales is not None:
        if len(scales) != len(weights):
            raise ValueError(f"scales has {len(scales)} entries, weights {len(weights)}")
        w = w * torch.as_tensor(list(scales), dtype=per_reward.dtype, device=per_reward.device)
    return (per_reward * w).sum(1)


def reward_hinge_loss(rewards: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """mean relu(margin − R_w): direct reward backprop through differentiable rewards (``bp_mixin.py``). With
    R_w ≈ 1.5 < 3 it is in practice always active, i.e. linear reward backprop."""
    return torch.relu(margin - cv.as_float(rewards)).mean()


def rtdmd_last_step_loss(
    ac_dmd: torch.Tensor, hinge: torch.Tensor, dmd_weight: float = 1e-3, bp_weight: float = 1e-4
) -> torch.Tensor:
    """L_last = 1e-3·L_AC-DMD + 1e-4·hinge on the deterministic last CPS step (PPO contributes nothing there)."""
    return dmd_weight * ac_dmd + bp_weight * hinge


def subgrpo_advantages(
    per_reward: torch.Tensor, weights: Sequence[float], group_ids: torch.Tensor, eps: float = 1e-4,
    clip: float = 5.0,
) -> torch.Tensor:
    """RTDMD stage-2 advantages (``grpo_trainer._grpo_compute_advantages``, ``weight_advantages``):
    A_k = (r_k − mean_{prompt} r_k)/(std_all r_k + eps) per reward (population std over the whole batch);
    A = Σ_k w_k A_k; A ← (A − mean A)/(std A + eps); clipped to ±clip. NaN rewards count as not applicable."""
    if per_reward.ndim != 2 or per_reward.shape[1] != len(weights):
        raise ValueError(f"per_reward must be (N, {len(weights)}), got {tuple(per_reward.shape)}")
    if group_ids.shape != per_reward.shape[:1]:
        raise ValueError(f"group_ids must be ({per_reward.shape[0]},), got {tuple(group_ids.shape)}")
    total = torch.zeros(per_reward.shape[0], dtype=torch.float64, device=per_reward.device)
    for k, w in enumerate(weights):
        a, _ = group_advantages(per_reward[:, k], group_ids, std="global", eps=eps, clip=float("inf"))
        total += float(w) * a.double()
    total = (total - total.mean()) / (total.std(unbiased=False) + eps)
    return total.clamp(-clip, clip).float()


def subgrpo_steps(seed: int, num_stochastic: int = 3, num_train: int = 2) -> Tuple[int, ...]:
    """SubGRPO's trained steps: a seeded random subset of ``num_train`` indices of the ``num_stochastic``
    stochastic CPS steps, sorted. A CPU generator seeded identically on every rank (e.g. seed + epoch) gives the
    same subset everywhere without a collective."""
    if not 1 <= num_train <= num_stochastic:
        raise ValueError(f"need 1 <= num_train <= num_stochastic, got {num_train}, {num_stochastic}")
    g = torch.Generator().manual_seed(int(seed))
    return tuple(sorted(torch.randperm(num_stochastic, generator=g)[:num_train].tolist()))
