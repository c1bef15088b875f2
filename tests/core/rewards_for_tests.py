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


# --- misbehaving user rewards (the bad-input corpus): each must end in one line naming the reward ---------------


class Raises(Reward):
    def score(self, samples, prompts, metadata):
        raise RuntimeError("the model exploded\nwith a second line")


class WrongCount(Reward):
    def score(self, samples, prompts, metadata):
        return torch.zeros(samples.shape[0] + 1)


class Strings(Reward):
    def score(self, samples, prompts, metadata):
        return ["good"] * samples.shape[0]


class Infinite(Reward):
    def score(self, samples, prompts, metadata):
        return torch.full((samples.shape[0],), float("-inf"))


class ComplexScores(Reward):
    def score(self, samples, prompts, metadata):
        return torch.zeros(samples.shape[0], dtype=torch.complex64)


class BrokenInit(Reward):
    def __init__(self):
        super().__init__()
        raise ImportError("No module named 'my_heavy_dependency'")


def wrong_signature(images):
    return images.mean(dim=(1, 2, 3))


def needs_threshold(samples, prompts, metadata, threshold):
    return (samples.mean(dim=(1, 2, 3)) > threshold).float()


def mean_function(samples, prompts, metadata, scale=1.0):
    """A valid plain-function reward."""
    return samples.float().mean(dim=(1, 2, 3)) * scale


NOT_A_REWARD = 3


class HalfNaN(Reward):
    """Brightness for even positions of the batch, NaN ("not applicable") for odd ones."""

    def score(self, samples, prompts, metadata):
        r = samples.float().mean(dim=(1, 2, 3))
        r[1::2] = float("nan")
        return r
