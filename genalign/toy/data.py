"""The ``digits`` toy world's data: sklearn's 1,797 real handwritten digits as 16×16 RGB images + prompts.

Choices (fixed; the shipped assets and the tests depend on them):

* **Source** — ``sklearn.datasets.load_digits`` (1,797 8×8 images, values 0..16, shipped inside scikit-learn,
  nothing downloaded).
* **Resolution** — upsampled 8×8 → 16×16 with bilinear interpolation (``align_corners=False``), then clamped
  to [0, 1]. 16×16 is the smallest size that keeps a 2-level UNet / a patch-2 transformer meaningful while a
  rollout of 32 images × 10 steps stays well under a second or two on CPU; bilinear (not nearest) gives smooth
  strokes instead of 2×2 blocks, so "thickness" and the classifier see natural-looking images.
* **Colour** — a **white digit on a black background** (sklearn's own polarity: value = ink), replicated to 3
  identical channels, in [0, 1] (the :mod:`genalign.rewards.base` image convention).
* **Split** — a fixed permutation from ``torch.Generator().manual_seed(SPLIT_SEED)``; the first
  ``N_HELDOUT`` = 360 indices (20 %) are the held-out split, the remaining 1,437 the training split.
* **Ink** — the mean intensity of the 16×16 grey image (fraction of the image covered by ink, in [0, 1]).
  ``THIN_INK`` / ``THICK_INK`` are the 1/3 and 2/3 quantiles of the training split's ink (0.2891 and 0.3213),
  rounded to 0.29 and 0.32: ink < 0.29 → "thin strokes", ink > 0.32 → "thick strokes", otherwise no phrase.
* **Prompts** — ``"a handwritten digit seven"`` optionally followed by ``", thick strokes"`` /
  ``", thin strokes"``. Training prompts: all 30 combinations (10 digits × {none, thick, thin}). Evaluation
  prompts: the 10 plain prompts, one per digit, so that digit-correctness on them is a clean GenEval-like
  number and grids are 10 prompts × seeds.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
SPLIT_SEED = 0
N_HELDOUT = 360
THIN_INK = 0.29
THICK_INK = 0.32

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = ("thick strokes", "thin strokes")
_WORD_TO_DIGIT = {w: i for i, w in enumerate(DIGIT_WORDS)}
_DIGIT_RE = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|[0-9])\b", re.IGNORECASE)


def upsample(images8: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, 8, 8) intensities in [0, 1] -> (N, 3, size, size) white-on-black RGB in [0, 1] (bilinear)."""
    x = F.interpolate(images8[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0).repeat(1, 3, 1, 1)


@lru_cache(maxsize=1)
def _load_all() -> Tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images8 = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    return upsample(images8), labels


def split_indices(split: str) -> torch.Tensor:
    """Indices into the 1,797 digits of the fixed ``"train"`` (1,437) or ``"heldout"`` (360) split."""
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(SPLIT_SEED))
    if split == "train":
        return perm[N_HELDOUT:]
    if split in ("heldout", "eval"):
        return perm[:N_HELDOUT]
    from ..errors import GenalignError

    raise GenalignError(f"unknown digits split '{split}'; valid choices: eval, heldout, train")


def load_split(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 3, 16, 16) in [0, 1], labels (N,))`` of a split (a copy; callers may modify it)."""
    images, labels = _load_all()
    idx = split_indices(split)
    return images[idx].clone(), labels[idx].clone()


def ink(images: torch.Tensor) -> torch.Tensor:
    """Mean grey intensity per image: (N, C, H, W) -> (N,)."""
    return images.mean(dim=(1, 2, 3))


def stroke_attribute(ink_value: float) -> Optional[str]:
    """``"thin strokes"`` below THIN_INK, ``"thick strokes"`` above THICK_INK, else None."""
    if ink_value < THIN_INK:
        return "thin strokes"
    if ink_value > THICK_INK:
        return "thick strokes"
    return None


def make_prompt(digit: int, attribute: Optional[str] = None) -> str:
    p = f"a handwritten digit {DIGIT_WORDS[int(digit)]}"
    return p if not attribute else f"{p}, {attribute}"


def digit_prompts(split: str = "train") -> List[str]:
    """The prompt list of a split: ``"train"`` -> 30 prompts (with attributes), ``"eval"`` -> 10 plain ones."""
    if split == "train":
        return [make_prompt(d, a) for d in range(10) for a in (None,) + ATTRIBUTES]
    if split == "eval":
        return [make_prompt(d) for d in range(10)]
    from ..errors import GenalignError

    raise GenalignError(f"unknown prompt split '{split}'; valid choices: eval, train")


def parse_digit(prompt: str) -> Optional[int]:
    """The digit a prompt asks for: a number word (``zero``..``nine``) or a lone numeral, case-insensitive.

    None when the prompt names no digit or names two different ones (ambiguous)."""
    found = {(_WORD_TO_DIGIT[m.lower()] if m.lower() in _WORD_TO_DIGIT else int(m)) for m in _DIGIT_RE.findall(prompt)}
    return found.pop() if len(found) == 1 else None


def training_prompts(labels: torch.Tensor, inks: torch.Tensor, generator: torch.Generator,
                     p_attribute: float = 0.5) -> List[str]:
    """One prompt per training image: the attribute phrase (if its ink has one) with probability p_attribute."""
    u = torch.rand(len(labels), generator=generator)
    out = []
    for lab, v, ui in zip(labels.tolist(), inks.tolist(), u.tolist()):
        attr = stroke_attribute(v) if ui < p_attribute else None
        out.append(make_prompt(lab, attr))
    return out


def write_prompt_files(out_dir: str) -> Dict[str, str]:
    """Write ``train.txt`` and ``eval.txt`` (one prompt per line) into ``out_dir``; returns their paths."""
    from ..io import atomic_write_text

    paths = {}
    for split in ("train", "eval"):
        path = os.path.join(out_dir, f"{split}.txt")
        atomic_write_text(path, "\n".join(digit_prompts(split)) + "\n")
        paths[split] = path
    return paths


def prompt_digits(prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> List[Optional[int]]:
    """The requested digit per prompt; ``metadata[i]["digit"]`` (an int 0-9), when present, wins over parsing."""
    out = []
    for i, p in enumerate(prompts):
        md = metadata[i] if metadata is not None else {}
        d = md.get("digit") if isinstance(md, dict) else None
        out.append(int(d) if d is not None else parse_digit(p))
    return out
