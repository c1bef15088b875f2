"""Deterministic rewards used by core tests through the dotted-import-path mechanism."""

import torch

from genalign.rewards.base import Reward


class MeanBrightness(Reward):
    """Mean pixel intensity (differentiable)."""

    differentiable = True

    def __init__(self, target: float = 1.0):
        super().__init__()
        self.target = target

    def score(self, samples, prompts, metadata):
        return -(samples.float().mean(dim=(1, 2, 3)) - self.target).abs()


class NaNReward(Reward):
    def score(self, samples, prompts, metadata):
        return torch.full((samples.shape[0],), float("nan"))
