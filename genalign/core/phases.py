"""Parts and phases: the vocabulary between the trainer and what it trains.

A **part** is a named trained network with its own optimiser settings: ``policy`` (the generator's denoiser or its
LoRA adapter) always exists; an algorithm or a learnable reward declares more (``fake_score``, ``gan_head``,
``discriminator``) through :class:`PartSpec`. The trainer alone prepares parts with accelerate, steps, clips,
averages gradients across processes, keeps their EMA and checkpoints them with their optimiser state.

A **phase** says which parts step in one pass of an iteration, how many times, and what it needs first::

    [Phase(("fake_score",), repeats=5), Phase(("policy",))]            # DMD2's two time-scale update rule
    [Phase(("discriminator",), needs={"rollout"}, exclusive=True)]      # Adv-GRPO's discriminator-only epochs
    [Phase(("policy",), needs={"rollout", "log_probs", "rewards"})]     # GRPO

``needs`` names what the trainer must have ready before the phase runs: ``rollout`` (samples from the current
policy), ``log_probs`` (a stochastic rollout with per-step log-probs), ``rewards`` (scores and advantages) and
``real`` (a batch of real data, ``data.real``). An ``exclusive`` phase, when any is returned for an iteration,
runs alone: the other phases of that iteration are skipped (e.g. Adv-GRPO's 9 discriminator-only iterations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Tuple

import torch

NEEDS = ("rollout", "log_probs", "rewards", "real")


@dataclass(frozen=True)
class Phase:
    parts: Tuple[str, ...] = ("policy",)
    repeats: int = 1
    needs: FrozenSet[str] = frozenset({"rollout", "rewards"})
    exclusive: bool = False
    name: str = ""

    def __post_init__(self):
        if isinstance(self.parts, str):
            object.__setattr__(self, "parts", (self.parts,))
        object.__setattr__(self, "needs", frozenset(self.needs))
        bad = sorted(set(self.needs) - set(NEEDS))
        if bad:
            raise ValueError(f"phase needs {bad}; valid: {', '.join(NEEDS)}")
        if self.repeats < 1:
            raise ValueError(f"phase repeats must be >= 1, got {self.repeats}")
        if not self.name:
            object.__setattr__(self, "name", "+".join(self.parts))


@dataclass
class PartSpec:
    """A trained network declared by an algorithm or a reward, with its default optimiser settings.

    ``None`` means "the run's ``train.*`` value"; a config section ``train.parts.<name>`` overrides any of them.
    """

    module: torch.nn.Module
    lr: Optional[float] = None
    betas: Optional[Tuple[float, float]] = None
    weight_decay: Optional[float] = None
    max_grad_norm: Optional[float] = None
    ema_decay: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """What a phase's losses train on, on this process: the rollout shard (``samples``, ``prompts``, ``metadata``,
    trajectories), its advantages (None without rewards), the gathered per-reward scores with their group ids and
    prompts (DRAGON's set split), and a real-data batch when the phase needs ``real``. ``valid`` (bool, this shard)
    is False for samples to which no reward applies (NaN): advantage 0, and out of the loss (``Algorithm.items``)."""

    iteration: int
    rollout: Any = None
    adv: Optional[torch.Tensor] = None
    per_reward: Optional[torch.Tensor] = None
    group_ids: Optional[torch.Tensor] = None
    prompts: Optional[list] = None
    weights: Optional[list] = None
    real: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self.rollout is None else len(self.rollout)
