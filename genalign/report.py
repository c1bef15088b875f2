"""``genalign report RUN_DIR``: the run at a glance, in one picture (``RUN_DIR/report.png``).

Top: training curves from ``metrics.jsonl`` — rewards (``reward_mean`` and every ``reward/<name>``), evaluation
rewards (``eval/reward_mean``, ``eval/<name>``, also read from ``samples/evals.jsonl``, which holds every
evaluation including the first and the last), the loss and ``kl`` when logged. Panels without data are left out,
so a run without rewards shows its loss only. Bottom: the first and the last evaluation grid
(``samples/iter_*.png``; spectrogram grids for audio runs) side by side.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
from typing import Dict, List, Optional, Tuple

from .errors import GenalignError
from .io import atomic_write_bytes

Series = Dict[str, List[Tuple[float, float]]]  # column -> [(step, value), ...]


def _read_jsonl(path: str) -> List[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: the rest of the file still counts
            if isinstance(rec, dict):
                rows.append(rec)
    return rows


def _number(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def read_curves(run_dir: str) -> Series:
    """Every numeric column of ``metrics.jsonl`` against ``step``, plus ``eval/...`` columns from
    ``samples/evals.jsonl`` (its ``iteration`` is the step; it adds the evaluations that metrics.jsonl lacks)."""
    series: Series = {}
    for i, row in enumerate(_read_jsonl(os.path.join(run_dir, "metrics.jsonl"))):
        step = _number(row.get("step"))
        step = float(i + 1) if step is None else step
        for k, v in row.items():
            v = _number(v)
            if k != "step" and v is not None:
                series.setdefault(k, []).append((step, v))
    seen = {k: {s for s, _ in pts} for k, pts in series.items()}
    for row in _read_jsonl(os.path.join(run_dir, "samples", "evals.jsonl")):
        step = _number(row.get("iteration"))
        if step is None:
            continue
        for k, v in row.items():
            v = _number(v)
            if k in ("iteration", "num_samples") or v is None:
                continue
            key = f"eval/{k}"
            if step not in seen.setdefault(key, set()):
                series.setdefault(key, []).append((step, v))
                seen[key].add(step)
    return {k: sorted(v) for k, v in series.items()}


def _panels(series: Series) -> List[Tuple[str, List[str]]]:
    def named(prefix):
        return sorted(k for k in series if k.startswith(prefix) and k != f"{prefix}reward_mean")

    panels = [
        ("training reward", (["reward_mean"] if "reward_mean" in series else []) + named("reward/")),
        ("evaluation reward", (["eval/reward_mean"] if "eval/reward_mean" in series else []) + named("eval/")),
        ("loss", [k for k in ("loss",) if k in series]),
        ("KL to the reference", [k for k in ("kl",) if k in series and any(v != 0 for _, v in series[k])]),
    ]
    return [(t, cols) for t, cols in panels if cols]


def eval_grids(run_dir: str) -> List[str]:
    """The evaluation grids ``samples/iter_<N>.png``, ordered by N."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "samples", "iter_*.png")):
        m = re.fullmatch(r"iter_(\d+)\.png", os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def write_report(run_dir: str, out: Optional[str] = None) -> str:
    """Write ``RUN_DIR/report.png`` (or ``out``) and return its path."""
    if not os.path.isdir(run_dir):
        raise GenalignError(f"run directory '{run_dir}' does not exist")
    series = read_curves(run_dir)
    panels = _panels(series)
    grids = eval_grids(run_dir)
    grids = grids if len(grids) <= 1 else [grids[0], grids[-1]]
    if not panels and not grids:
        raise GenalignError(f"'{run_dir}' has no metrics.jsonl rows with rewards or loss and no samples/iter_*.png "
                            f"grids; is it a genalign run directory?")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot: no global state, no display
    from matplotlib.figure import Figure
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in grids]
    n_cols = max(1, len(panels))
    img_h = 0.0
    if images:  # height (inches) of the image row for a 5-inch-per-panel width, capped
        aspect = sum(im.height / im.width for im in images) / len(images)
        img_h = min(9.0, max(3.0, aspect * 5.0 * max(n_cols, 2) / len(images)))
    curve_h = 3.2 if panels else 0.0
    fig = Figure(figsize=(5.0 * max(n_cols, 2), curve_h + img_h + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 if panels and images else 1, 1, height_ratios=[curve_h, img_h] if panels and images
                          else None)
    if panels:
        top = gs[0].subgridspec(1, n_cols, wspace=0.3)
        for j, (title, cols) in enumerate(panels):
            ax = fig.add_subplot(top[0, j])
            for c in cols:
                xs, ys = zip(*series[c])
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=c,
                        linewidth=2.0 if c.endswith("reward_mean") else 1.2)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("iteration", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    if images:
        bottom = gs[-1].subgridspec(1, len(images), wspace=0.05)
        for j, (im, p) in enumerate(zip(images, grids)):
            ax = fig.add_subplot(bottom[0, j])
            ax.imshow(im, interpolation="nearest")
            it = int(re.fullmatch(r"iter_(\d+)\.png", os.path.basename(p)).group(1))
            which = "first" if j == 0 and len(images) > 1 else ("last" if len(images) > 1 else "only")
            ax.set_title(f"{which} evaluation: iteration {it}", fontsize=10)
            ax.axis("off")
    fig.suptitle(f"genalign run {os.path.basename(os.path.abspath(run_dir))}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    path = out or os.path.join(run_dir, "report.png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def report_main(args) -> int:
    path = write_report(args.run_dir, getattr(args, "out", None))
    print(f"genalign: wrote {os.path.abspath(path)}")
    return 0
