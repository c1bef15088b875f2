"""PPO-clip surrogate and the per-step Gaussian KL of Flow-GRPO / Diffusion GRPO (METHODS.md §3.2–3.3)."""

from __future__ import annotations

import torch


def ppo_clip_loss(ratio: torch.Tensor, adv: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per-sample PPO-clip loss max(−A·r, −A·clip(r, 1−lo, 1+hi)) (Schulman et al. 2017, Eq. 7; METHODS §3.2)."""
    return torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - lo, 1.0 + hi))


def mean_kl(mu: torch.Tensor, mu_ref: torch.Tensor, std: torch.Tensor, dt: torch.Tensor, form: str) -> torch.Tensor:
    """Per-sample KL between two Gaussian transitions with the same std (METHODS §3.3), mean over dims.

    ``std`` is the transition std s_t·sqrt(|dt|). ``exact``: mean_d (μ−μ_ref)²/(2 std²).
    ``flow_grpo``: the reference code's mean_d (μ−μ_ref)²/(2 s_t²) = exact × |dt|."""
    kl = ((mu - mu_ref) ** 2).flatten(1).mean(1) / (2 * std**2)
    return kl * dt if form == "flow_grpo" else kl
