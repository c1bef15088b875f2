"""Shared helpers of the algorithm trainer tests: tiny pipelines built once per session, a small config, and
deterministic test rewards (loaded by dotted path, as a user's reward would be)."""

from __future__ import annotations

import functools
import os
import tempfile

import torch

from genalign.config import build_config
from genalign.rewards.base import Reward
from genalign.trainer import Trainer

_ROOT = tempfile.mkdtemp(prefix="genalign_alg_trainer_")


@functools.lru_cache(maxsize=None)
def tiny_model(family: str) -> str:
    from genalign.testing import tiny

    out = os.path.join(_ROOT, family)
    if family == "sd3":
        return tiny.build_tiny_sd3(out)
    if family == "sd":
        return tiny.build_tiny_sd15(out)
    raise ValueError(family)


def make_config(tmp_path, algorithm: dict, rewards=None, family: str = "sd3", **train):
    size = 16 if family == "sd3" else 32
    raw = {
        "model": {"family": family, "path": tiny_model(family), "height": size, "width": size,
                  "lora": {"rank": 2, "alpha": 4}},
        "sampler": {"num_steps": 2, "eval_num_steps": 2, "guidance_scale": 4.5,
                    "kernel": "sde" if family == "sd3" else "ddim"},
        "data": {"prompts": ["a red cube", "a blue ball", "a green tree"], "eval_prompts": ["a red cube"],
                 "group_size": 3, "prompts_per_iteration": 2, "eval_seeds": [0]},
        "train": {"iterations": 2, "learning_rate": 1e-2, "rollout_batch_size": 6, "train_batch_size": 3,
                  "eval_every": 0, "save_every": 0, "optimizer_steps_per_iteration": 1, **train},
        "algorithm": algorithm,
        "rewards": rewards if rewards is not None else [{"name": "tests.algorithms.trainer_utils:Brightness"}],
        "run": {"output_dir": str(tmp_path / "run"), "log_with": [], "progress": False},
    }
    return build_config(raw)


def trainer_for(cfg) -> Trainer:
    tr = Trainer(cfg)
    tr.setup()
    return tr


def batch_for(tr, ro, per=None, groups=None, prompts=None, adv=None, weights=(1.0,)):
    """A training batch as the trainer builds it: the rollout shard, advantages and the gathered rewards."""
    from genalign.core.phases import Batch

    return Batch(0, rollout=ro, adv=adv, per_reward=per, group_ids=groups, prompts=prompts, weights=list(weights))


def update_once(tr, batch):
    """One iteration's update: the algorithm's phases through the trainer's stepper, then after_iteration."""
    out = {}
    for ph in tr.algorithm.phases(batch.iteration):
        out.update(tr.stepper.run(ph, tr.algorithm, tr.view, batch))
    out.update(tr.algorithm.after_iteration(tr.view))
    return out


def snapshot(tr):
    return [p.detach().clone() for p in tr.generator.trainable_parameters()]


def changed(tr, before) -> int:
    return sum(int(not torch.equal(a, b)) for a, b in zip(before, tr.generator.trainable_parameters()))


class Brightness(Reward):
    """Mean pixel intensity."""

    def score(self, samples, prompts, metadata):
        return samples.float().mean(dim=(1, 2, 3))


class Darkness(Reward):
    """1 − mean intensity (conflicts with Brightness)."""

    def score(self, samples, prompts, metadata):
        return 1 - samples.float().mean(dim=(1, 2, 3))


class RedExcess(Reward):
    """Mean of red minus the other channels."""

    def score(self, samples, prompts, metadata):
        s = samples.float()
        return (s[:, 0] - 0.5 * (s[:, 1] + s[:, 2])).mean(dim=(1, 2))


class Constant(Reward):
    """The same reward for every sample (zero advantages)."""

    def score(self, samples, prompts, metadata):
        return torch.full((samples.shape[0],), 0.5)


class SetBrightnessGap(Reward):
    """Set reward: −|mean brightness of the batch − target|, broadcast to every sample."""

    scope = "set"

    def __init__(self, target: float = 0.8):
        super().__init__()
        self.target = target

    def score(self, samples, prompts, metadata):
        v = -abs(float(samples.float().mean()) - self.target)
        return torch.full((samples.shape[0],), v)


class SetBrightnessGapContrib(SetBrightnessGap):
    """The same set reward in the convention of genalign.rewards.distributional: ``set_value`` is R(batch) and
    the per-sample scores are the leave-one-out contributions R(batch) − R(batch − i)."""

    def set_value(self, samples, prompts=None, metadata=None):
        return torch.tensor(-abs(float(samples.float().mean()) - self.target), dtype=torch.float64)

    def score(self, samples, prompts, metadata):
        n = samples.shape[0]
        full = float(self.set_value(samples))
        keep = torch.ones(n, dtype=torch.bool)
        out = []
        for i in range(n):
            keep[i] = False
            out.append(full - float(self.set_value(samples[keep])))
            keep[i] = True
        return torch.tensor(out)


def mean_rgb(x):
    """A hand-checkable encoder for distributional rewards: each image's mean colour (N, 3)."""
    return x.float().mean(dim=(2, 3))
