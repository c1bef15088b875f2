"""Sampling outside training: image grids, PNG files and ``genalign sample``."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch

from .io import append_jsonl, atomic_write_bytes


def to_pil(img: torch.Tensor):
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def save_png(img: torch.Tensor, path: str) -> None:
    import io

    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(samples: torch.Tensor, rows: int, cols: int, path: str, upscale: int = 0) -> None:
    """A rows × cols grid (rows = prompts, columns = seeds) with diffusers' ``make_image_grid``.
    Small images (toy world) are upscaled with nearest neighbour so that the grid is visible."""
    import io

    from diffusers.utils import make_image_grid

    images = [to_pil(s) for s in samples]
    h = images[0].height
    factor = upscale or max(1, 128 // max(h, 1))
    if factor > 1:
        images = [im.resize((im.width * factor, im.height * factor), 0) for im in images]
    grid = make_image_grid(images, rows=rows, cols=cols)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def sample_to_dir(generator, prompts: Sequence[str], seeds: Sequence[int], scfg, out_dir: str,
                  num_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                  batch_size: int = 8, rewards=None, before_write=None) -> List[dict]:
    """Deterministic samples for every (prompt, seed): PNGs, a grid, and samples.jsonl with reward scores.

    ``before_write()``, if given, runs once everything is sampled and scored, just before the first file is written
    (``genalign sample --overwrite`` clears earlier samples there, so a failure before it loses nothing)."""
    os.makedirs(out_dir, exist_ok=True)
    items = [(p, s) for p in prompts for s in seeds]
    outs = []
    for a in range(0, len(items), batch_size):
        chunk = items[a : a + batch_size]
        ro = generator.rollout([p for p, _ in chunk], [s for _, s in chunk], scfg, num_steps=num_steps,
                               guidance_scale=guidance_scale, stochastic=False)
        outs.append(ro.samples.cpu())
    samples = torch.cat(outs)
    scores = {}
    for r in rewards or []:
        scores[r.name] = r(samples, [p for p, _ in items]).cpu()
    if before_write is not None:
        before_write()
    records = []
    for k, (p, s) in enumerate(items):
        fname = f"{k:04d}_seed{s}.png"
        save_png(samples[k], os.path.join(out_dir, fname))
        rec = {"prompt": p, "seed": s, "file": fname, "rewards": {n: float(v[k]) for n, v in scores.items()}}
        append_jsonl(os.path.join(out_dir, "samples.jsonl"), rec)
        records.append(rec)
    save_grid(samples, len(prompts), len(seeds), os.path.join(out_dir, "grid.png"))
    return records
