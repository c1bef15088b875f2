"""The algorithm contract.

An algorithm is a dataclass whose fields are its hyper-parameters (validated from the config's ``algorithm:``
section). The trainer owns the loop, the parts and their optimisers; the algorithm says what it trains and turns a
batch into losses, seeing only a narrow :class:`~genalign.core.view.View` (never the accelerator or an optimiser):

* ``phases(iteration)`` — which parts step this iteration, how often, and what each phase needs first
  (default: one policy phase on a rollout with rewards, plus per-step log-probs when ``needs_log_probs``).
* ``declare_parts(view)`` — extra trained networks (a fake score, a GAN head) as ``{name: PartSpec}``.
* ``sampling_policy(view)`` / ``rollout_kwargs(view, iteration)`` — how the rollout samples (e.g. DiffusionNFT
  samples with its soft old policy).
* ``advantages(per_reward, weights, group_ids, prompts, mode)`` — per-sample advantages from the (N, K) rewards.
* ``items(view, batch)`` + ``units(batch, items)`` + ``losses(view, batch, items)`` — the training items of this
  process (default: its sample indices), and the backward units of a micro-batch of them; the trainer scales each
  unit by 1/(units × micro-batches) so one optimiser step averages them.
* ``objectives(view)`` + ``combine(view, grads, stats)`` — multi-objective steps (MARBLE's min-norm QP): with
  K > 1 the losses yield K losses per unit (``view.probe``), and ``combine`` returns the direction to apply.
* ``after_iteration(view)`` — e.g. DiffusionNFT's soft old-policy update.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Tuple

import torch

from ..core.phases import Phase
from .advantages import combined_advantages


class Algorithm:
    needs_rewards: bool = True
    needs_log_probs: bool = True
    store_means: bool = False

    # ------------------------------------------------------------------------------------------ what trains
    def phases(self, iteration: int) -> List[Phase]:
        needs = {"rollout"} | ({"rewards"} if self.needs_rewards else set())
        if self.needs_log_probs:
            needs.add("log_probs")
        return [Phase(("policy",), needs=frozenset(needs))]

    def declare_parts(self, view) -> Dict[str, Any]:
        return {}

    def setup(self, view) -> None:
        """Before the parts exist (e.g. ask the generator for a frozen reference copy)."""

    def after_parts(self, view) -> None:
        """After the parts are prepared (e.g. snapshot the policy's parameters)."""

    # ------------------------------------------------------------------------------------------ rollout
    def sampling_policy(self, view):
        return contextlib.nullcontext()

    def rollout_kwargs(self, view, iteration: int) -> Dict[str, Any]:
        return {}

    # ------------------------------------------------------------------------------------------ advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode: str):
        """-> (advantages (N,) or (N, K), stats dict, keep mask (N,) bool)."""
        adv, stats = combined_advantages(per_reward, weights, group_ids, mode=mode)
        return adv, {k: v for k, v in stats.items() if not k.startswith("_")}, torch.ones(adv.shape[0], dtype=torch.bool)

    # ------------------------------------------------------------------------------------------ losses
    def items(self, view, batch) -> List[Any]:
        """This shard's sample indices, less those the update leaves out (``batch.valid``: a NaN reward, or not
        kept by the algorithm's advantage mask, e.g. GRPO's ``best_of_n`` / ``drop_zero_std_groups``) — unless that
        leaves none here, when all stay in with advantage 0 (a process must not run an empty micro-batch next to
        others)."""
        valid = getattr(batch, "valid", None)
        if valid is not None and bool(valid.any()):
            return [i for i in range(len(batch)) if bool(valid[i])]
        return list(range(len(batch)))

    def minibatch(self, batch, items):
        """(rollout slice, advantages slice) of sample-index items."""
        return batch.rollout.index(items), (None if batch.adv is None else batch.adv[items])

    def units(self, batch, items) -> int:
        return 1

    def losses(self, view, batch, items) -> Iterator[Tuple[torch.Tensor, Dict[str, float]]]:
        raise NotImplementedError

    def after_iteration(self, view) -> Dict[str, float]:
        return {}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        pass
