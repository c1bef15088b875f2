"""Cheap deterministic rewards: for tests, smoke runs and as examples of the Reward protocol.

* ``brightness`` — mean intensity of an image in [0, 1] (differentiable).
* ``target_color`` — negative Euclidean distance of an image's mean RGB colour to a configured colour
  (differentiable).
* ``jpeg_compressibility`` — DDPO's compressibility reward (arXiv 2305.13301, Sec. 6): minus the size in
  kilobytes (1 kB = 1000 bytes) of the image saved as JPEG at quality 95 (not differentiable).
* ``jpeg_incompressibility`` — its negation (DDPO's "incompressibility").
"""

from __future__ import annotations

import io
from typing import Sequence

import torch

from ..errors import ConfigError
from ..registry import REWARDS
from .base import Reward


def _check_images(name: str, samples: torch.Tensor) -> None:
    if samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"reward '{name}' expects images (N, 3, H, W); got shape {tuple(samples.shape)}")


def to_uint8_images(samples: torch.Tensor):
    """(N, 3, H, W) floats in [0, 1] -> list of PIL RGB images (rounded to 8 bits)."""
    from PIL import Image

    arr = (samples.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


@REWARDS.register("brightness")
class BrightnessReward(Reward):
    """Mean pixel intensity over channels and pixels, in [0, 1]."""

    differentiable = True
    modality = "image"

    def score(self, samples, prompts, metadata):
        _check_images(self.name, samples)
        return samples.mean(dim=(1, 2, 3))


@REWARDS.register("target_color")
class TargetColorReward(Reward):
    """``-‖mean_rgb(x) − rgb‖₂``; 0 for an image whose mean colour is exactly ``rgb`` (floats in [0, 1])."""

    differentiable = True
    modality = "image"

    def __init__(self, rgb: Sequence[float] = (1.0, 0.0, 0.0)):
        super().__init__()
        rgb = [float(v) for v in rgb]
        if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
            raise ConfigError(f"target_color: rgb must be three floats in [0, 1], got {rgb}")
        self.rgb = rgb

    def score(self, samples, prompts, metadata):
        _check_images(self.name, samples)
        target = torch.tensor(self.rgb, dtype=samples.dtype, device=samples.device)
        mean = samples.mean(dim=(2, 3))
        return -torch.linalg.vector_norm(mean - target, dim=1)


@REWARDS.register("jpeg_compressibility")
class JpegCompressibilityReward(Reward):
    """DDPO: ``-(JPEG bytes at quality 95) / 1000``. Smaller files (simpler images) score higher."""

    differentiable = False
    modality = "image"
    sign = -1.0

    def __init__(self, quality: int = 95):
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f"{self.registry_name}: quality must be in [1, 100], got {quality}")
        self.quality = int(quality)

    def score(self, samples, prompts, metadata):
        _check_images(self.name, samples)
        sizes = []
        for img in to_uint8_images(samples):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000.0)
        return self.sign * torch.tensor(sizes, dtype=torch.float32)


@REWARDS.register("jpeg_incompressibility")
class JpegIncompressibilityReward(JpegCompressibilityReward):
    """DDPO's incompressibility: ``+(JPEG bytes at quality 95) / 1000``."""

    sign = 1.0
