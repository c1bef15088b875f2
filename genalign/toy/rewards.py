"""Rewards of the ``digits`` toy world (registered in ``REWARDS``; see :mod:`genalign.rewards.base`).

All take images (N, 3, H, W) in [0, 1], white digit on black. "grey" below is the channel mean g(x) of a pixel.

* ``digit_correctness`` — p(prompted digit | image) under the shipped CNN classifier (softmax of its logits):
  a GenEval-like correctness score in [0, 1]. The digit comes from ``metadata[i]["digit"]`` when present, else
  is parsed from the prompt (:func:`genalign.toy.data.parse_digit`); NaN when neither names exactly one digit.
  Differentiable.
* ``ink`` — mean grey intensity, ``mean_ij g_ij`` in [0, 1]: how much of the canvas is ink (stroke thickness).
  Differentiable. Conflicts with correctness (a blob has maximal ink) and with contrast beyond 50 % coverage.
* ``centredness`` — ``1 - ||c|| / sqrt(2)`` with ``c = sum_ij g_ij p_ij / (sum_ij g_ij + 1e-8)`` the ink
  centroid, pixel centres ``p_ij`` in [-1, 1]^2 ((2j + 1) / W - 1); 1 when the ink mass is centred (also for a
  blank image, whose centroid is taken as the centre), 0 with all ink in a corner. Differentiable.
* ``contrast`` — the population standard deviation of the grey intensities of the image, in [0, 0.5]
  (0.5 for half black / half white). Differentiable. Rewards flat, high-coverage images over thin strokes.
* ``digit_fd`` — scope ``set``: the Fréchet distance (FD) between the classifier's penultimate features of the
  batch and of the 360 held-out real digits (:mod:`genalign.toy.metrics`). ``mode="set"`` gives every sample
  ``-FD`` (higher is better); ``mode="leave_one_out"`` gives sample i ``FD(batch without i) - FD(batch)``, its
  contribution to closing the gap (positive when it helps). Not differentiable (eigendecompositions).
* ``digit_diversity`` — scope ``set``: the Vendi score of the batch's classifier features (cosine kernel),
  broadcast to every sample; for detecting mode collapse.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, choices
from ..registry import REWARDS
from ..rewards.base import Reward
from .data import prompt_digits


def correctness_from_logits(logits: torch.Tensor, digits: Sequence[Optional[int]]) -> torch.Tensor:
    """p(digit) per row from classifier logits (N, 10); NaN where the digit is None. Keeps the graph."""
    probs = torch.softmax(logits.float(), dim=-1)
    valid = torch.tensor([d is not None for d in digits], device=logits.device)
    idx = torch.tensor([d if d is not None else 0 for d in digits], device=logits.device)
    picked = probs.gather(1, idx[:, None]).squeeze(1)
    return torch.where(valid, picked, torch.full_like(picked, float("nan")))


def grey(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) channel mean."""
    return images.float().mean(dim=1)


def ink_score(images: torch.Tensor) -> torch.Tensor:
    return grey(images).mean(dim=(1, 2))


def centredness_score(images: torch.Tensor) -> torch.Tensor:
    g = grey(images)
    n, h, w = g.shape
    ys = (2 * torch.arange(h, device=g.device, dtype=g.dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=g.device, dtype=g.dtype) + 1) / w - 1
    mass = g.sum(dim=(1, 2)) + 1e-8
    cy = (g.sum(dim=2) * ys).sum(dim=1) / mass
    cx = (g.sum(dim=1) * xs).sum(dim=1) / mass
    return 1 - torch.sqrt(cx**2 + cy**2 + 1e-12) / math.sqrt(2)


def contrast_score(images: torch.Tensor) -> torch.Tensor:
    g = grey(images).flatten(1)
    return (g - g.mean(dim=1, keepdim=True)).pow(2).mean(dim=1).add(1e-12).sqrt()


class _ClassifierReward(Reward):
    def __init__(self, classifier_path: Optional[str] = None) -> None:
        super().__init__()
        self.classifier_path = classifier_path
        self._clf = None

    @property
    def classifier(self):
        if self._clf is None:
            from .assets import CLASSIFIER, asset_path
            from .classifier import DigitClassifier

            clf = DigitClassifier.load(self.classifier_path or asset_path(*CLASSIFIER))
            for p in clf.parameters():
                p.requires_grad_(False)
            self._clf = clf
        self._clf.to(self.device)
        return self._clf


@REWARDS.register("digit_correctness")
class DigitCorrectness(_ClassifierReward):
    """p(prompted digit | image) under the toy digit classifier; NaN for prompts naming no single digit."""

    differentiable = True

    def score(self, samples, prompts, metadata):
        logits = self.classifier(samples.to(self.device))
        return correctness_from_logits(logits, prompt_digits(prompts, metadata))


@REWARDS.register("ink")
class Ink(Reward):
    """Mean grey intensity (ink coverage / stroke thickness), in [0, 1]."""

    differentiable = True

    def score(self, samples, prompts, metadata):
        return ink_score(samples)


@REWARDS.register("centredness")
class Centredness(Reward):
    """1 - |ink centroid| / sqrt(2), coordinates in [-1, 1]; 1 = centred."""

    differentiable = True

    def score(self, samples, prompts, metadata):
        return centredness_score(samples)


@REWARDS.register("contrast")
class Contrast(Reward):
    """Standard deviation of the grey intensities, in [0, 0.5]."""

    differentiable = True

    def score(self, samples, prompts, metadata):
        return contrast_score(samples)


@REWARDS.register("digit_fd")
class DigitFD(_ClassifierReward):
    """Set reward: Fréchet distance of the batch's classifier features to the held-out real digits.

    ``mode="set"``: every sample scores ``-FD``. ``mode="leave_one_out"``: sample i scores
    ``FD(batch without i) - FD(batch)``. Needs at least 2 samples (3 for leave_one_out)."""

    scope = "set"
    differentiable = False
    MODES = ("set", "leave_one_out")

    def __init__(self, mode: str = "set", classifier_path: Optional[str] = None) -> None:
        super().__init__(classifier_path)
        if mode not in self.MODES:
            raise ConfigError(f"digit_fd: unknown mode '{mode}'; valid choices: {choices(self.MODES)}")
        self.mode = mode
        self._real = None

    def to(self, device) -> "DigitFD":
        self._real = None  # real-digit statistics are recomputed on the new device
        return super().to(device)

    def _real_stats(self):
        if self._real is None:
            from .data import load_split
            from .metrics import gaussian_stats

            real, _ = load_split("heldout")
            self._real = gaussian_stats(self.classifier.features(real.to(self.device)))
        return self._real

    def score(self, samples, prompts, metadata):
        from .metrics import frechet_distance, gaussian_stats

        n = samples.shape[0]
        need = 3 if self.mode == "leave_one_out" else 2
        if n < need:
            raise ValueError(f"reward 'digit_fd' (mode {self.mode}) needs at least {need} samples, got {n}")
        feats = self.classifier.features(samples.to(self.device))
        real = self._real_stats()
        full = frechet_distance(*gaussian_stats(feats), *real)
        if self.mode == "set":
            return torch.full((n,), -full)
        keep = torch.ones(n, dtype=torch.bool)
        out = []
        for i in range(n):
            keep[i] = False
            out.append(frechet_distance(*gaussian_stats(feats[keep.to(feats.device)]), *real) - full)
            keep[i] = True
        return torch.tensor(out)


@REWARDS.register("digit_diversity")
class DigitDiversity(_ClassifierReward):
    """Set reward: Vendi score (cosine kernel) of the batch's classifier features, broadcast to every sample."""

    scope = "set"
    differentiable = False

    def score(self, samples, prompts, metadata):
        from .metrics import vendi_score

        return torch.full((samples.shape[0],), vendi_score(self.classifier.features(samples.to(self.device))))
