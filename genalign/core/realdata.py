"""Real data for phases that need it (``data.real``): an image folder, a ``.safetensors`` file holding a
``samples`` tensor (N, C, H, W) in [0, 1] (or waveforms in [-1, 1]), or ``toy:digits`` (the toy world's training
digits). Batches are drawn with a seed derived from (run seed, iteration), so resumed runs draw the same data."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from ..errors import ConfigError
from .seeding import torch_generator

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_real(source: str, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    if source == "toy:digits":
        from ..toy.data import load_split

        images, _ = load_split("train")
        return images
    if source.endswith(".safetensors"):
        from .checkpoint import read_safetensors

        t = read_safetensors(source)
        if "samples" not in t:
            raise ConfigError(f"'data.real' file '{source}' has no 'samples' tensor; keys: {sorted(t)}")
        return t["samples"].float()
    if os.path.isdir(source):
        from PIL import Image

        files = sorted(f for f in os.listdir(source) if f.lower().endswith(IMAGE_EXT))
        if not files:
            raise ConfigError(f"'data.real' folder '{source}' holds no images ({', '.join(IMAGE_EXT)})")
        out = []
        for f in files:
            im = Image.open(os.path.join(source, f)).convert("RGB")
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            out.append(torch.from_numpy(__import__("numpy").asarray(im)).permute(2, 0, 1).float() / 255.0)
        return torch.stack(out)
    raise ConfigError(f"'data.real' is '{source}'; give an image folder, a .safetensors file or toy:digits")


class RealData:
    def __init__(self, source: str, seed: int, size=None):
        self.data = load_real(source, size)
        self.seed = seed

    def batch(self, iteration: int, n: int, rank: int = 0) -> torch.Tensor:
        """Rank r's n rows: rows r·n..(r+1)·n of one draw from (seed, iteration), so that the processes together
        see what one process drawing n·world rows sees (rank 0's rows are the one-process draw's first n)."""
        g = torch_generator(self.seed, iteration, 0, 11)
        return self.data[torch.randint(len(self.data), (n * (rank + 1),), generator=g)[rank * n:]]
