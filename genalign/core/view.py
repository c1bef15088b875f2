"""The narrow view that losses see: the model adapter (predict, reference policy, per-step log-probs, family
features, the noise law), the trained parts' forward modules and parameters, and a few collectives — never the
accelerator or an optimiser. Algorithms and learnable rewards receive a :class:`View`; the trainer builds it."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List

import torch

from .seeding import derive_seed


class View:
    def __init__(self, host):
        self._host = host  # the trainer; only the members used below are reached
        self.phase = None  # the phase being run (set by the stepper)
        self.probe = False  # True while a multi-objective step asks for one loss per objective

    # ------------------------------------------------------------------------------------------ the run
    @property
    def cfg(self):
        return self._host.cfg

    @property
    def generator(self):
        """The model adapter: ``predict``, ``reference()``, ``step_log_prob``, ``law``, ``encode``, ``decode``."""
        return self._host.generator

    @property
    def law(self):
        return getattr(self._host.generator, "law", None)

    @property
    def rewards(self) -> List[Any]:
        return self._host.rewards

    @property
    def reward_names(self) -> List[str]:
        return self._host.reward_names

    @property
    def iteration(self) -> int:
        return self._host.iteration

    @property
    def rank(self) -> int:
        return self._host.rank

    @property
    def world(self) -> int:
        return self._host.world

    @property
    def device(self) -> torch.device:
        return self._host.device

    def seed(self, *parts: int) -> int:
        """A seed derived from (run seed, iteration, *parts)."""
        return derive_seed(self._host.cfg.train.seed, self._host.iteration, *parts)

    # ------------------------------------------------------------------------------------------ parts
    def module(self, part: str = "policy") -> torch.nn.Module:
        """The part's module for forward passes that train (wrapped for distributed training where it is)."""
        return self._host.parts[part].module

    @property
    def model(self) -> torch.nn.Module:
        return self.module("policy")

    def parameters(self, part: str = "policy") -> List[torch.nn.Parameter]:
        return self._host.parts[part].params

    def step_count(self, part: str = "policy") -> int:
        """Optimiser steps the part has taken."""
        return self._host.parts[part].steps

    def predict(self, x, t, cond, guidance: float = 1.0, part: str = "policy", detach_uncond: bool = False):
        return self._host.generator.predict(self.module(part), x, t, cond, guidance, detach_uncond)

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference network (adapter off, or a frozen copy), under no_grad and autocast."""
        with torch.no_grad(), self.autocast(), self._host.generator.reference() as ref:
            yield ref

    def step_log_prob(self, mb, step_idx, detach_uncond: bool = False, model=None):
        return self._host.generator.step_log_prob(model if model is not None else self.model, mb, step_idx,
                                                  self._host.cfg.sampler, detach_uncond=detach_uncond)

    def autocast(self):
        return self._host.accelerator.autocast()

    # ------------------------------------------------------------------------------------------ collectives
    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum or mean of ``t`` over processes (identity on one process)."""
        if self._host.world == 1:
            return t
        return self._host.accelerator.reduce(t, reduction=op)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        if self._host.world == 1:
            return t
        return self._host.accelerator.gather(t.to(self.device)).cpu()

    def gathered_samples(self, rollout) -> torch.Tensor:
        """``rollout.samples`` from every process, on the CPU; gathered once per rollout and shared with the
        trainer's set-scope rewards and monitors."""
        return self._host.gathered_samples(rollout)

    def sum_hook(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``all_reduce(·, "sum")`` as a function for pure losses that take one (None on one process)."""
        return None if self._host.world == 1 else (lambda t: self.all_reduce(t, "sum"))

    def extra(self) -> Dict[str, Any]:
        return {}
