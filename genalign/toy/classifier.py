"""A small CNN digit classifier for the ``digits`` toy world (the judge behind ``digit_correctness`` and FD).

Input: images (N, 3, H, W) in [0, 1], white digit on black; resized to 16×16 (bilinear, antialiased) if needed,
reduced to grey (channel mean). Architecture (config json keys in brackets):
conv3×3(1→c1) ReLU maxpool2 → conv3×3(c1→c2) ReLU maxpool2 → flatten (c2·4·4) → linear(→feat_dim) ReLU
[the penultimate features used by the Fréchet distance] → linear(→10).
Weights ship as safetensors next to ``config.json``; nothing is pickled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG: Dict[str, Any] = {"channels": [16, 32], "feat_dim": 64, "image_size": 16, "num_classes": 10}


class DigitClassifier(nn.Module):
    def __init__(self, channels=(16, 32), feat_dim: int = 64, image_size: int = 16, num_classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.image_size = int(image_size)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * (image_size // 4) ** 2, feat_dim)
        self.fc2 = nn.Linear(feat_dim, num_classes)
        self.config = {"channels": [c1, c2], "feat_dim": feat_dim, "image_size": image_size,
                       "num_classes": num_classes}

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x.mean(dim=1, keepdim=True)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feat_dim)."""
        x = self._prep(images)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10)."""
        return self.fc2(self.features(images))

    def save(self, out_dir: str) -> None:
        from safetensors.torch import save_file

        from ..io import atomic_write_json

        os.makedirs(out_dir, exist_ok=True)
        atomic_write_json(os.path.join(out_dir, "config.json"), self.config)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  os.path.join(out_dir, "model.safetensors"))

    @classmethod
    def load(cls, path: str) -> "DigitClassifier":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..errors import CheckpointError

        cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise CheckpointError(f"digit classifier file missing: {p} (rebuild with scripts/build_toy_assets.py)")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            model = cls(**cfg)
            model.load_state_dict(load_file(w_path))
        except (ValueError, TypeError, RuntimeError, OSError, SafetensorError) as e:
            raise CheckpointError(f"corrupt digit classifier at {path}: {str(e).splitlines()[0]}") from None
        return model.eval()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: a random shift of up to ±1 pixel, intensity scale in [0.7, 1.1], blur mix, noise."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))
    shift = torch.randint(0, 9, (n,), generator=generator)  # (dy, dx) = divmod(shift, 3)
    h, w = images.shape[-2:]
    x = torch.empty_like(images)
    for s in range(9):
        sel = shift == s
        dy, dx = divmod(s, 3)
        x[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    a = torch.rand(n, 1, 1, 1, generator=generator) * 0.5
    x = (1 - a) * x + a * blur
    x = x * (0.7 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator))
    x = x + 0.05 * torch.rand(n, 1, 1, 1, generator=generator) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, batch_size: int = 128,
                     lr: float = 2e-3) -> DigitClassifier:
    """Train a :class:`DigitClassifier` with Adam on augmented images; deterministic given ``seed``."""
    torch.manual_seed(seed)
    model = DigitClassifier(**DEFAULT_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x = augment(images[idx], g)
        for group in opt.param_groups:  # cosine decay to 10 %
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / max(steps, 1))).item()))
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(-1) == labels).float().mean().item()
