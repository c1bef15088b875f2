"""The reward protocol.

A reward is a callable that scores a batch of generated samples::

    scores = reward(samples, prompts, metadata)   # -> torch.Tensor of shape (N,), float32

* ``samples`` — images as a float tensor (N, 3, H, W) in [0, 1], or waveforms (N, C, L) in [-1, 1].
* ``prompts`` — list of N strings; ``metadata`` — list of N dicts (may carry labels, boxes, ...).
* One score per sample; ``NaN`` means "not applicable to this sample" (e.g. an OCR reward on a prompt
  without quoted text). Aggregation treats NaN as missing, never as a number.
* ``scope`` — ``"sample"`` (each score depends on its sample only), ``"group"`` (on the samples of the same
  prompt), or ``"set"`` (on the whole batch, gathered across processes, e.g. a Fréchet distance to an
  exemplar set). The trainer calls ``group`` and ``set`` rewards on gathered batches.
* ``differentiable`` — True when the score is a differentiable function of ``samples`` (usable for direct
  reward back-propagation); such rewards must not detach or leave torch.
* ``modality`` — ``"image"``, ``"audio"`` or ``"any"`` (modality-agnostic: e.g. a set reward whose encoder decides,
  or a remote reward told what to send). :meth:`Reward.declared_modality` gives it from the config args without
  building the reward, so that config validation can refuse a reward that cannot score the model's outputs.

Rewards never know which algorithm uses them. Heavy models load lazily on first call, on the device that
``to(device)`` gave (the trainer calls it once).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch


class Reward:
    """Base class for rewards. Subclasses implement :meth:`score`."""

    scope: str = "sample"  # sample | group | set
    differentiable: bool = False
    modality: str = "image"  # image | audio | any
    registry_name: str = "reward"

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.registry_name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @classmethod
    def declared_modality(cls, args: Optional[Dict[str, Any]] = None) -> str:
        """The modality this reward scores with these config args (default: the class's ``modality``)."""
        return cls.modality

    def to(self, device) -> "Reward":
        self.device = torch.device(device)
        return self

    def score(self, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Dict[str, Any]]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        samples: torch.Tensor,
        prompts: Sequence[str],
        metadata: Optional[Sequence[Dict[str, Any]]] = None,
    ) -> torch.Tensor:
        if metadata is None:
            metadata = [{} for _ in prompts]
        if len(prompts) != samples.shape[0] or len(metadata) != samples.shape[0]:
            raise ValueError(
                f"reward '{self.name}': got {samples.shape[0]} samples, {len(prompts)} prompts, "
                f"{len(metadata)} metadata entries"
            )
        if self.differentiable:
            out = self.score(samples, prompts, metadata)
        else:
            with torch.no_grad():
                out = self.score(samples.detach(), prompts, metadata)
        out = out.float() if torch.is_tensor(out) else torch.as_tensor(out, dtype=torch.float32)
        if out.shape != (samples.shape[0],):
            raise ValueError(f"reward '{self.name}' returned shape {tuple(out.shape)}, expected ({samples.shape[0]},)")
        return out


class LearnableReward(Reward):
    """A reward with trained parts (Adv-GRPO's discriminator, a preference head...).

    Scoring (``__call__``) stays gradient-free and pure. Training is the reward's own business, run by the trainer:

    * ``parts()`` -> ``{name: PartSpec(module, lr=..., betas=...)}``: the trained networks and their optimiser
      defaults (a config section ``train.parts.<name>`` overrides them). The trainer prepares them with accelerate
      (gradients averaged across processes), steps, clips, and checkpoints them with the run.
    * ``phases(iteration)`` -> the phases to add on a training iteration (default: every part steps once per
      iteration on the current rollout). Return ``exclusive=True`` phases for iterations on which only the reward
      trains (e.g. 9 discriminator-only iterations per generator iteration).
    * ``losses(view, batch, items)`` yields ``(loss, stats)`` backward units for the micro-batch ``items`` (indices
      into ``batch.rollout``, this process's samples); forward through ``view.module(part)`` so that distributed
      hooks fire. ``units(batch, items)`` is how many units it yields (the trainer averages them).
    * ``state_dict()`` / ``load_state_dict()``: non-parameter state (counters, running statistics) as tensors.
    """

    learnable = True

    def parts(self) -> Dict[str, Any]:
        raise NotImplementedError

    def phases(self, iteration: int) -> List[Any]:
        from ..core.phases import Phase

        return [Phase(tuple(self.parts()), needs=frozenset({"rollout"}))]

    def items(self, view, batch) -> List[Any]:
        """This process's training items (default: the indices of its samples in ``batch.rollout``)."""
        return list(range(len(batch)))

    def units(self, batch, items) -> int:
        return 1

    def losses(self, view, batch, items):
        raise NotImplementedError

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        pass


def build_reward(name: str, args: Optional[Dict[str, Any]] = None) -> Reward:
    """Instantiate a registered reward (or a dotted import path) with its config args."""
    from ..config import check_kwargs
    from ..registry import REWARDS

    from ..config import resolve_path

    cls = REWARDS.get(name)
    args = {k: resolve_path(v) for k, v in dict(args or {}).items()}  # shipped assets resolve from any directory
    check_kwargs(cls, args, f"reward '{name}'")
    obj = cls(**args)
    if "registry_name" not in vars(cls):  # a dotted-path class: named after itself, not its base ("reward")
        obj.name = cls.__name__
    if not callable(obj):
        from ..errors import ConfigError

        raise ConfigError(f"reward '{name}' is not callable")
    return obj


def build_rewards(specs) -> List[Reward]:
    out = []
    for spec in specs:
        r = build_reward(spec.name, spec.args)
        r.weight = float(spec.weight)
        out.append(r)
    return out
