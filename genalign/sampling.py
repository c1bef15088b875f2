"""Sampling outside training (``genalign sample``): a thin user of :mod:`genalign.evaluation`.

``to_pil`` / ``save_png`` / ``save_grid`` remain for callers that write single images or a bare grid."""

from __future__ import annotations

import io
import os
from typing import List, Optional, Sequence

import torch

from .io import atomic_write_bytes
from .media import labelled_grid, to_pil, upscale_factor

__all__ = ["to_pil", "save_png", "save_grid", "sample_to_dir"]


def save_png(img: torch.Tensor, path: str) -> None:
    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(samples: torch.Tensor, rows: int, cols: int, path: str, upscale: int = 0,
              prompts: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None) -> None:
    """A labelled rows × cols image grid (rows = prompts, columns = seeds; ``prompts``/``seeds`` per row/column,
    default blank rows and column numbers). Small images are upscaled with nearest neighbour."""
    from PIL import Image

    images = [to_pil(s) for s in samples]
    f = upscale or upscale_factor(images[0].height, images[0].width)
    if f > 1:
        images = [im.resize((im.width * f, im.height * f), Image.NEAREST) for im in images]
    grid = labelled_grid(images, rows, cols, list(prompts) if prompts is not None else [""] * rows,
                         [f"seed {s}" for s in seeds] if seeds is not None else [str(c) for c in range(cols)])
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def sample_to_dir(generator, prompts: Sequence[str], seeds: Sequence[int], scfg, out_dir: str,
                  num_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                  batch_size: int = 8, rewards=None, before_write=None) -> List[dict]:
    """Deterministic samples for every (prompt, seed) into ``out_dir``: one file per sample (``0000_seed0.png`` or
    ``.wav``), ``grid.png`` (images, or spectrograms for audio, with ``index.html`` players), and ``samples.jsonl``
    with reward scores. Returns the records.

    ``before_write()``, if given, runs once everything is sampled and scored, just before the first file is written
    (``genalign sample --overwrite`` clears earlier samples there, so a failure before it loses nothing)."""
    os.makedirs(out_dir, exist_ok=True)
    from .evaluation import sample_and_write

    out = sample_and_write(generator, prompts, seeds, scfg, out_dir, tag="grid", num_steps=num_steps,
                           guidance_scale=guidance_scale, batch_size=batch_size, rewards=rewards, subdir="",
                           before_write=before_write)
    return out["records"]
