"""Parameterisation conversions for rectified-flow and VP diffusion models (METHODS.md §1).

Pure tensor functions, computed in float32 (float64 inputs stay float64). Time-like arguments
(``sigma``, ``alpha``, ``sigma_t``, ``alpha_bar``) may be Python floats, 0-d tensors, per-sample tensors of
shape ``(N,)``, or tensors already broadcastable to the sample (``(N, 1, 1, 1)``).

Rectified flow (SD3, FLUX, ...): x_σ = (1−σ)x0 + σε, target v = ε − x0.

    x̂0 = x − σv        ε̂ = x + (1−σ)v        v = (x − x̂0)/σ = (ε̂ − x)/(1−σ)

VP diffusion (SD1.5, SDXL): x_t = α_t x0 + σ_t ε with α_t = √ᾱ_t, σ_t = √(1−ᾱ_t). Prediction types use the
diffusers names ``"epsilon"``, ``"v_prediction"`` (v = α_t ε − σ_t x0) and ``"sample"`` (x0-prediction).

Flow ↔ VP at the same signal-to-noise ratio: c = √((1−σ)² + σ²), x_VP = x_flow/c, α_VP = (1−σ)/c,
σ_VP = σ/c (so ᾱ = (1−σ)²/c²). Inversely σ_flow = σ_VP/(α_VP + σ_VP) and x_flow = x_VP/(α_VP + σ_VP).
Both states describe the same (x0, ε) pair, so x̂0 and ε̂ are invariant under the mapping; a VP model's
prediction therefore yields a flow velocity v = ε̂ − x̂0 at the matching flow time (and vice versa).
"""

from __future__ import annotations

from typing import Tuple, Union

import torch

from genalign.errors import ConfigError, choices

Scalar = Union[float, torch.Tensor]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Promote half/bfloat16 to float32; keep float32/float64 as they are."""
    x = torch.as_tensor(x)
    if x.dtype == torch.float64:
        return x
    return x.float()


def bcast(v: Scalar, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample scalar (float, 0-d, ``(N,)``, or full-rank tensor) against ``like``."""
    v = torch.as_tensor(v, device=like.device)
    v = v.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    if v.ndim == 0 or v.ndim == like.ndim:
        return v
    if v.ndim == 1 and v.shape[0] == like.shape[0]:
        return v.reshape(-1, *([1] * (like.ndim - 1)))
    raise ValueError(f"cannot broadcast a time tensor of shape {tuple(v.shape)} against {tuple(like.shape)}")


# ------------------------------------------------------------------------------------------------ flow
def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """x_σ = (1−σ)·x0 + σ·ε."""
    x0, noise = as_float(x0), as_float(noise)
    s = bcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity target v = ε − x0."""
    return as_float(noise) - as_float(x0)


def flow_x0_from_v(x: torch.Tensor, v: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """x̂0 = x − σ·v."""
    x, v = as_float(x), as_float(v)
    return x - bcast(sigma, x) * v


def flow_eps_from_v(x: torch.Tensor, v: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """ε̂ = x + (1−σ)·v."""
    x, v = as_float(x), as_float(v)
    return x + (1 - bcast(sigma, x)) * v


def flow_v_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """v = (x − x̂0)/σ (undefined at σ = 0)."""
    x, x0 = as_float(x), as_float(x0)
    return (x - x0) / bcast(sigma, x)


def flow_v_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """v = (ε̂ − x)/(1−σ) (undefined at σ = 1)."""
    x, eps = as_float(x), as_float(eps)
    return (eps - x) / (1 - bcast(sigma, x))


def flow_score_from_v(x: torch.Tensor, v: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """∇log p_σ(x) ≈ −ε̂/σ = −(x + (1−σ)v)/σ."""
    return -flow_eps_from_v(x, v, sigma) / bcast(sigma, as_float(x))


# -------------------------------------------------------------------------------------------------- VP
def vp_alpha_sigma(alpha_bar: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) = (√ᾱ_t, √(1−ᾱ_t))."""
    ab = torch.as_tensor(alpha_bar)
    ab = ab.double() if ab.dtype == torch.float64 else ab.float()
    return ab.sqrt(), (1 - ab).sqrt()


def vp_interpolate(x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """x_t = α_t·x0 + σ_t·ε."""
    x0, noise = as_float(x0), as_float(noise)
    return bcast(alpha, x0) * x0 + bcast(sigma, x0) * noise


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: {choices(PREDICTION_TYPES)}")


def vp_pred_to_x0_eps(
    pred: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction_type: str = "epsilon"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a VP model output (METHODS §1 table)."""
    _check_prediction_type(prediction_type)
    pred, x = as_float(pred), as_float(x)
    a, s = bcast(alpha, x), bcast(sigma, x)
    if prediction_type == "epsilon":
        return (x - s * pred) / a, pred
    if prediction_type == "v_prediction":
        return a * x - s * pred, s * x + a * pred
    return pred, (x - a * pred) / s


def vp_x0_eps_to_pred(
    x0: torch.Tensor, eps: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The VP model output of a given type that corresponds to (x̂0, ε̂)."""
    _check_prediction_type(prediction_type)
    x0, eps = as_float(x0), as_float(eps)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0
    return x0


def vp_convert_prediction(
    pred: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar, from_type: str, to_type: str
) -> torch.Tensor:
    """Convert a VP model output between ``epsilon`` / ``v_prediction`` / ``sample`` at state x_t."""
    x0, eps = vp_pred_to_x0_eps(pred, x, alpha, sigma, from_type)
    return vp_x0_eps_to_pred(x0, eps, alpha, sigma, to_type)


def vp_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction_type: str
) -> torch.Tensor:
    """The training target of a VP model of the given prediction type."""
    return vp_x0_eps_to_pred(x0, noise, alpha, sigma, prediction_type)


# ---------------------------------------------------------------------------------------- flow <-> VP
def flow_sigma_to_vp(sigma: Scalar) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow time σ → (c, α_VP, σ_VP) with c = √((1−σ)² + σ²), α_VP = (1−σ)/c, σ_VP = σ/c."""
    s = torch.as_tensor(sigma)
    s = s.double() if s.dtype == torch.float64 else s.float()
    c = torch.sqrt((1 - s) ** 2 + s**2)
    return c, (1 - s) / c, s / c


def flow_to_vp(x_flow: torch.Tensor, sigma: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_VP, ᾱ) with the same SNR as the flow state: x_VP = x_flow/c, ᾱ = (1−σ)²/c²."""
    x_flow = as_float(x_flow)
    c, a, _ = flow_sigma_to_vp(sigma)
    return x_flow / bcast(c, x_flow), a**2


def vp_to_flow(x_vp: torch.Tensor, alpha_bar: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_flow, σ_flow) with the same SNR: σ_flow = σ_VP/(α+σ_VP), x_flow = x_VP/(α+σ_VP)."""
    x_vp = as_float(x_vp)
    a, s = vp_alpha_sigma(alpha_bar)
    return x_vp / bcast(a + s, x_vp), s / (a + s)


def vp_pred_to_flow_velocity(
    pred: torch.Tensor, x_vp: torch.Tensor, alpha_bar: Scalar, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Flow velocity v = ε̂ − x̂0 implied by a VP model output at a VP state (same SNR)."""
    a, s = vp_alpha_sigma(alpha_bar)
    x0, eps = vp_pred_to_x0_eps(pred, x_vp, a, s, prediction_type)
    return eps - x0


def flow_velocity_to_vp_pred(
    v: torch.Tensor, x_flow: torch.Tensor, sigma: Scalar, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The VP model output (of the given type) equivalent to a flow velocity at a flow state."""
    x0, eps = flow_x0_from_v(x_flow, v, sigma), flow_eps_from_v(x_flow, v, sigma)
    _, a, s = flow_sigma_to_vp(sigma)
    return vp_x0_eps_to_pred(x0, eps, a, s, prediction_type)


def vp_timestep_for_alpha_bar(alphas_cumprod: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    """Fractional discrete timestep whose ᾱ matches ``alpha_bar``, interpolated linearly in log-SNR.

    ``alphas_cumprod`` is the scheduler's decreasing table (diffusers ``scheduler.alphas_cumprod``).
    Values outside the table are clamped to its ends. Round the result for models that need integer t.
    """
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    table = torch.log(ac) - torch.log1p(-ac)  # log-SNR, decreasing in t
    q = torch.log(ab) - torch.log1p(-ab)
    neg = -table  # increasing
    idx = torch.searchsorted(neg, -q).clamp(1, len(ac) - 1)
    lo, hi = neg[idx - 1], neg[idx]
    frac = ((-q - lo) / (hi - lo).clamp_min(1e-30)).clamp(0, 1)
    return (idx - 1).double() + frac


def logsnr_flow(sigma: Scalar) -> torch.Tensor:
    """log-SNR of a flow time: 2·log((1−σ)/σ)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 2 * (torch.log1p(-s) - torch.log(s))

