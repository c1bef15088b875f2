"""GUI-G² rewards (arXiv 2507.15846, METHODS.md §12) as plain trl reward functions.

Every function has trl's reward signature ``f(prompts, completions, **kwargs) -> list[float]``: the
ground-truth boxes come from a dataset column (``bbox`` by default, ``[x1,y1,x2,y2]`` in the model's frame),
so the functions work unchanged in ``trl.GRPOTrainer(reward_funcs=[...])`` and from plain Python::

    gaussian_point_reward(None, ["[100,100,200,140]"], bbox=[[100, 100, 200, 140]])  # -> [1.0]

Boxes are Gaussians: μ = box centre, σ = α·(w, h) with α = 0.5 (GUI-G² §3, "adaptive variance").

Degenerate input never raises and never returns NaN:
* unparseable completion, missing or malformed ground truth -> 0 for every reward;
* zero-width/height ground truth -> 0 for the Gaussian rewards (the reference divides by zero and its
  ``except`` returns 0); a zero-width prediction gets R_cov ≈ 0 while R_point may be 1;
* inverted boxes are accepted (σ is squared), off-screen boxes simply score low; overflow -> 0.
The reference guards (3-decimal rounding, 1e-8 epsilons) are keyword options whose defaults are the
reference's; :func:`make_reward_funcs` builds configured, named copies for a trainer.

The rewards score text, not images, so they are not registered in ``genalign.registry.REWARDS`` (whose
:class:`~genalign.rewards.base.Reward` protocol scores image/audio tensors); trl calls them directly.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError, choices
from .coords import is_strict_box, parse_box

DEFAULT_ALPHA = 0.5
DEFAULT_ROUND = 3
DEFAULT_EPS = 1e-8


def _box(b: Any) -> Optional[tuple]:
    try:
        vals = tuple(float(v) for v in b)
    except (TypeError, ValueError):
        return None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    return vals


def _finish(value: float, round_digits: Optional[int]) -> float:
    if not math.isfinite(value):
        return 0.0
    return round(value, round_digits) if round_digits is not None else float(value)


def _gaussian(box, alpha: float):
    """(μx, μy, σx, σy) of a box; σ = α·(x2−x1, y2−y1), signed (squared later, as in the reference)."""
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, alpha * (x2 - x1), alpha * (y2 - y1)


def point_score(pred, gt, alpha: float = DEFAULT_ALPHA) -> float:
    """R_point = exp(−½[(Δx/σx_g)² + (Δy/σy_g)²]) — GUI-G² Gaussian point reward (ground-truth σ only)."""
    px, py, _, _ = _gaussian(pred, alpha)
    gx, gy, sx, sy = _gaussian(gt, alpha)
    return math.exp(-0.5 * ((px - gx) ** 2 / sx**2 + (py - gy) ** 2 / sy**2))


def coverage_score(pred, gt, alpha: float = DEFAULT_ALPHA, eps_inv: float = DEFAULT_EPS,
                   eps_det: float = DEFAULT_EPS) -> float:
    """R_cov = exp(−D_B), the Bhattacharyya coefficient between N(μ_p, Σ_p) and N(μ_g, Σ_g) — GUI-G² coverage.

    Σ = (Σ_p + Σ_g)/2; D_B = ⅛ Δμᵀ (Σ + eps_inv·I)⁻¹ Δμ + ½ ln(det Σ / √(det Σ_p det Σ_g + eps_det)).
    Covariances are diagonal, so the inverse and determinants are elementwise.
    """
    px, py, psx, psy = _gaussian(pred, alpha)
    gx, gy, gsx, gsy = _gaussian(gt, alpha)
    vx = (psx**2 + gsx**2) / 2.0
    vy = (psy**2 + gsy**2) / 2.0
    maha = (px - gx) ** 2 / (vx + eps_inv) + (py - gy) ** 2 / (vy + eps_inv)
    det = vx * vy
    det_pg = (psx**2 * psy**2) * (gsx**2 * gsy**2)
    d_b = maha / 8.0 + 0.5 * math.log(det / math.sqrt(det_pg + eps_det))
    return math.exp(-d_b)


def iou_score(pred, gt) -> float:
    """Intersection over union of two boxes (inverted boxes are normalised first; empty union -> 0)."""
    ax1, ax2 = sorted((pred[0], pred[2]))
    ay1, ay2 = sorted((pred[1], pred[3]))
    bx1, bx2 = sorted((gt[0], gt[2]))
    by1, by2 = sorted((gt[1], gt[3]))
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def _gt_list(kwargs: Dict[str, Any], column: str, n: int) -> List[Any]:
    gts = kwargs.get(column)
    if gts is None:
        raise ConfigError(
            f"GUI reward needs the ground-truth column '{column}'; got columns: {choices(kwargs) or '(none)'}"
        )
    gts = list(gts)
    if len(gts) != n:
        raise ValueError(f"GUI reward got {n} completions but {len(gts)} ground-truth boxes in '{column}'")
    return gts


def _pairwise(completions, kwargs, column, marker, fn) -> List[float]:
    gts = _gt_list(kwargs, column, len(completions))
    out = []
    for comp, gt in zip(completions, gts):
        pred = parse_box(comp, marker)
        gt_box = _box(gt)
        if pred is None or gt_box is None:
            out.append(0.0)
            continue
        try:
            out.append(fn(pred, gt_box))
        except (ZeroDivisionError, OverflowError, ValueError):  # reference: any exception -> 0
            out.append(0.0)
    return out


def gaussian_point_reward(prompts, completions, *, bbox_column: str = "bbox", alpha: float = DEFAULT_ALPHA,
                          round_digits: Optional[int] = DEFAULT_ROUND, marker: Optional[str] = "assistant\n",
                          **kwargs) -> List[float]:
    """GUI-G² Gaussian point reward of each completion against ``kwargs[bbox_column]``."""
    return _pairwise(completions, kwargs, bbox_column, marker,
                     lambda p, g: _finish(point_score(p, g, alpha), round_digits))


def gaussian_coverage_reward(prompts, completions, *, bbox_column: str = "bbox", alpha: float = DEFAULT_ALPHA,
                             round_digits: Optional[int] = DEFAULT_ROUND, eps_inv: float = DEFAULT_EPS,
                             eps_det: float = DEFAULT_EPS, marker: Optional[str] = "assistant\n",
                             **kwargs) -> List[float]:
    """GUI-G² Gaussian coverage (Bhattacharyya) reward of each completion against ``kwargs[bbox_column]``."""
    return _pairwise(completions, kwargs, bbox_column, marker,
                     lambda p, g: _finish(coverage_score(p, g, alpha, eps_inv, eps_det), round_digits))


def gaussian_reward(prompts, completions, *, point_weight: float = 1.0, coverage_weight: float = 1.0,
                    **kwargs) -> List[float]:
    """R = ν·R_point + γ·R_cov (GUI-G², ν = γ = 1); keyword options are passed to both parts."""
    rp = gaussian_point_reward(prompts, completions, **kwargs)
    rc = gaussian_coverage_reward(prompts, completions, **kwargs)
    return [point_weight * a + coverage_weight * b for a, b in zip(rp, rc)]


def format_reward(prompts, completions, *, marker: Optional[str] = "assistant\n", **kwargs) -> List[float]:
    """1 when the whole answer is ``[int,int,int,int]``, else 0 (GUI-G² format reward)."""
    return [1.0 if is_strict_box(c, marker) else 0.0 for c in completions]


def point_in_box_reward(prompts, completions, *, bbox_column: str = "bbox", marker: Optional[str] = "assistant\n",
                        **kwargs) -> List[float]:
    """Sparse baseline: 1 when the predicted box centre lies inside the ground-truth box (edges included)."""

    def hit(p, g):
        cx, cy = (p[0] + p[2]) / 2.0, (p[1] + p[3]) / 2.0
        x1, x2 = sorted((g[0], g[2]))
        y1, y2 = sorted((g[1], g[3]))
        return 1.0 if (x1 <= cx <= x2 and y1 <= cy <= y2) else 0.0

    return _pairwise(completions, kwargs, bbox_column, marker, hit)


def iou_reward(prompts, completions, *, bbox_column: str = "bbox", threshold: Optional[float] = 0.5,
               marker: Optional[str] = "assistant\n", **kwargs) -> List[float]:
    """Sparse baseline: 1 when IoU > ``threshold`` (GUI-G²'s "IoU > 0.5" ablation); ``threshold=None``
    returns the IoU itself."""

    def score(p, g):
        v = iou_score(p, g)
        return v if threshold is None else (1.0 if v > threshold else 0.0)

    return _pairwise(completions, kwargs, bbox_column, marker, score)


REWARD_FUNCS: Dict[str, Callable[..., List[float]]] = {
    "gaussian_point": gaussian_point_reward,
    "gaussian_coverage": gaussian_coverage_reward,
    "gaussian": gaussian_reward,
    "format": format_reward,
    "point_in_box": point_in_box_reward,
    "iou": iou_reward,
}


def make_reward_funcs(names: Sequence[str], **options: Any) -> List[Callable[..., List[float]]]:
    """Named reward callables for ``trl.GRPOTrainer``: each binds the options it accepts.

    trl logs ``rewards/<__name__>/mean``; the returned functions are named after ``names``.
    Options: bbox_column, alpha, round_digits, eps_inv, eps_det, marker, threshold, point_weight,
    coverage_weight. Unknown names raise :class:`ConfigError`.
    """
    import inspect

    funcs = []
    for name in names:
        if name not in REWARD_FUNCS:
            raise ConfigError(f"unknown GUI reward '{name}'; valid choices: {choices(REWARD_FUNCS)}")
        base = REWARD_FUNCS[name]
        params = inspect.signature(base).parameters
        accepted = set(params)
        if name == "gaussian":  # forwards to both parts
            accepted |= set(inspect.signature(gaussian_coverage_reward).parameters)
        bound = {k: v for k, v in options.items() if k in accepted}

        def f(prompts, completions, _base=base, _bound=bound, **kwargs):
            return _base(prompts, completions, **{**kwargs, **_bound})

        f.__name__ = name
        f.__qualname__ = name
        f.__doc__ = base.__doc__
        funcs.append(f)
    return funcs
