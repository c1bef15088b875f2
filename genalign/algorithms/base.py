"""The algorithm contract.

An algorithm is a dataclass whose fields are its hyper-parameters (validated from the config's ``algorithm:``
section). The trainer owns the loop; the algorithm says what it needs and turns a rollout into losses:

* ``needs_log_probs`` — rollouts must be stochastic with per-step log-probs (GRPO), or may be any
  deterministic sampler keeping only the clean sample (DiffusionNFT).
* ``advantages(per_reward, weights, group_ids, prompts)`` — per-sample advantages from the (N, K) rewards.
* ``units(mb)`` + ``losses(ctx, mb, adv)`` — the backward units of one micro-batch (e.g. one per trained
  timestep); the trainer scales each by 1/(units × micro-batches) so one optimiser step averages them
  (gradient accumulation over trained timesteps, as Flow-GRPO does).
* ``after_iteration(ctx)`` — e.g. DiffusionNFT's soft old-policy update.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

import torch

from .advantages import combined_advantages


class Algorithm:
    needs_rewards: bool = True
    needs_log_probs: bool = True
    store_means: bool = False

    def setup(self, ctx) -> None:
        pass

    def rollout_kwargs(self, ctx, iteration: int) -> Dict[str, Any]:
        return {}

    def advantages(self, per_reward, weights, group_ids, prompts, mode: str):
        """-> (advantages (N,) or (N, K), stats dict, keep mask (N,) bool)."""
        adv, stats = combined_advantages(per_reward, weights, group_ids, mode=mode)
        return adv, {k: v for k, v in stats.items() if not k.startswith("_")}, torch.ones(adv.shape[0], dtype=torch.bool)

    def units(self, mb) -> int:
        return 1

    def losses(self, ctx, mb, adv: torch.Tensor) -> Iterator[Tuple[torch.Tensor, Dict[str, float]]]:
        raise NotImplementedError

    def update(self, ctx, ro, adv_local):
        """Override to take over the whole update of an iteration (e.g. MARBLE's per-reward gradient passes);
        return a stats dict. The default (None) lets the trainer run its standard accumulation loop, which calls
        ``units``/``losses`` and ``ctx.optimizer_step_now()``-equivalent logic."""
        return None

    def after_iteration(self, ctx) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        pass
