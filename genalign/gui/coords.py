"""Coordinate frames of GUI grounding and parsing of model output (METHODS.md §12).

Frames (boxes are always ``[x1, y1, x2, y2]``, points ``[x, y]``):

* ``pixel``    — pixels of the original screenshot (ScreenSpot ground truth).
* ``resized``  — pixels of the image the Qwen2.5-VL processor actually feeds the model, after
  :func:`smart_resize`. Qwen2.5-VL (and GUI-G²) predict in this frame.
* ``norm``     — fractions of the image size in [0, 1] (SeeClick; the evaluation metric's frame).
* ``norm1000`` — integers in [0, 1000) (Qwen2-VL / OS-Atlas ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``).

Ground truth is mapped *into* the model's frame for training and predictions are mapped *back* for
evaluation, always with the processor's actual ``min_pixels`` / ``max_pixels``
(:func:`processor_pixels`): a train/eval mismatch is the main cause of coordinate drift.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence, Tuple

from ..errors import GenalignError, choices

FRAMES = ("pixel", "resized", "norm", "norm1000")

# Qwen2.5-VL hub processor settings (used by GUI-G²) and the Qwen2VLImageProcessor() defaults.
QWEN25VL_MIN_PIXELS = 3136
QWEN25VL_MAX_PIXELS = 12_845_056
QWEN2VL_DEFAULT_MIN_PIXELS = 56 * 56
QWEN2VL_DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # 1,003,520


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN2VL_DEFAULT_MIN_PIXELS,
    max_pixels: int = QWEN2VL_DEFAULT_MAX_PIXELS,
) -> Tuple[int, int]:
    """Return ``(h', w')``: the size the Qwen2-VL / Qwen2.5-VL image processor resizes an image to.

    METHODS.md §12: both sides a multiple of ``factor`` (patch 14 x merge 2 = 28), the pixel count inside
    [min_pixels, max_pixels], the aspect ratio kept. Python's ``round`` is round-half-to-even, as in the
    reference. Aspect ratios above 200 raise :class:`GenalignError`.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise GenalignError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise GenalignError(
            f"image aspect ratio must be at most 200, got {max(height, width) / min(height, width):.1f} "
            f"({width}x{height})"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def processor_pixels(processor: Any) -> Tuple[int, int, int]:
    """``(min_pixels, max_pixels, factor)`` that a Qwen2-VL-style processor (or image processor) really uses."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    if not isinstance(size, dict):  # SizeDict in some transformers versions
        size = {k: getattr(size, k, None) for k in ("shortest_edge", "longest_edge")}
    min_px = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_px = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    if min_px is None or max_px is None:
        raise GenalignError(
            f"cannot read min/max pixels from {type(ip).__name__}; expected a Qwen2-VL-style image processor"
        )
    factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
    return int(min_px), int(max_px), factor


def set_processor_pixels(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Make a Qwen2-VL-style processor resize with ``min_pixels`` / ``max_pixels``."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None)
    if isinstance(size, dict) or size is None:
        ip.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    else:
        size.shortest_edge = int(min_pixels)
        size.longest_edge = int(max_pixels)
    for name, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(ip, name):
            setattr(ip, name, int(v))


def resized_size(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = 28) -> Tuple[int, int]:
    """``(w', h')`` of the resized frame (note the (width, height) order, unlike :func:`smart_resize`)."""
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h


def _check_frame(frame: str) -> None:
    if frame not in FRAMES:
        raise GenalignError(f"unknown coordinate frame '{frame}'; valid choices: {choices(FRAMES)}")


def _scale(frame: str, size: Sequence[float], resized: Optional[Sequence[float]]) -> Tuple[float, float]:
    """Units per unit of the normalised [0, 1] frame, in ``frame``, along x and y."""
    if frame == "pixel":
        return float(size[0]), float(size[1])
    if frame == "resized":
        if resized is None:
            raise GenalignError("the 'resized' frame needs the resized image size (see coords.resized_size)")
        return float(resized[0]), float(resized[1])
    if frame == "norm":
        return 1.0, 1.0
    return 1000.0, 1000.0


def convert_coords(
    values: Sequence[float],
    src: str,
    dst: str,
    size: Sequence[float],
    resized: Optional[Sequence[float]] = None,
) -> list:
    """Map a box ``[x1,y1,x2,y2]`` or a point ``[x,y]`` from frame ``src`` to frame ``dst``.

    ``size`` = (width, height) of the original image; ``resized`` = (w', h') of the model frame.
    Linear maps only (no clamping, no rounding), so a round trip is exact up to float error.
    """
    _check_frame(src)
    _check_frame(dst)
    if len(values) not in (2, 4):
        raise GenalignError(f"coordinates must be a point [x,y] or a box [x1,y1,x2,y2], got {list(values)}")
    sx, sy = _scale(src, size, resized)
    dx, dy = _scale(dst, size, resized)
    out = []
    for i, v in enumerate(values):
        if i % 2 == 0:
            out.append(float(v) / sx * dx)
        else:
            out.append(float(v) / sy * dy)
    return out


def xywh_to_xyxy(b: Sequence[float]) -> list:
    return [float(b[0]), float(b[1]), float(b[0]) + float(b[2]), float(b[1]) + float(b[3])]


def box_center(b: Sequence[float]) -> Tuple[float, float]:
    return (float(b[0]) + float(b[2])) / 2.0, (float(b[1]) + float(b[3])) / 2.0


# ----------------------------------------------------------------------------------------------------------
# Parsing model output

_NUM = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
BOX_RE = re.compile(r"\[\s*" + _SEP.join([_NUM] * 4) + r"\s*\]")
POINT_RE = re.compile(r"[\[\(]\s*" + _NUM + _SEP + _NUM + r"\s*[\]\)]")
QWEN2_BOX_RE = re.compile(
    r"<\|box_start\|>\s*\(\s*" + _NUM + _SEP + _NUM + r"\s*\)\s*,\s*\(\s*" + _NUM + _SEP + _NUM
    + r"\s*\)\s*<\|box_end\|>"
)
STRICT_BOX_RE = re.compile(r"^\[\s*" + _SEP.join([r"-?\d+"] * 4) + r"\s*\]$")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or trl's conversational form (a list of message dicts)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content or "")
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"]
        return completion_text(assistant[-1]) if assistant else ""
    return str(completion)


def answer_text(text: str, marker: Optional[str] = "assistant\n") -> str:
    """The text after the last ``marker`` (the reference parses after the last 'assistant\\n')."""
    if marker and marker in text:
        return text.rsplit(marker, 1)[1]
    return text


def parse_box(text: Any, marker: Optional[str] = "assistant\n") -> Optional[Tuple[float, float, float, float]]:
    """The first ``[x1,y1,x2,y2]`` (floats and negatives allowed) in the answer, else the first Qwen2-VL
    ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``; ``None`` when there is none. Values are in the model's frame."""
    s = answer_text(completion_text(text), marker)
    m = BOX_RE.search(s)
    if m is None:
        m = QWEN2_BOX_RE.search(s)
    if m is None:
        return None
    vals = tuple(float(g) for g in m.groups())
    if not all(math.isfinite(v) for v in vals):
        return None
    return vals  # type: ignore[return-value]


def parse_click(text: Any, marker: Optional[str] = "assistant\n") -> Optional[Tuple[float, float]]:
    """The click point of an answer: the centre of its box, else the first point ``[x,y]`` / ``(x,y)``."""
    box = parse_box(text, marker)
    if box is not None:
        return box_center(box)
    s = answer_text(completion_text(text), marker)
    m = POINT_RE.search(s)
    if m is None:
        return None
    x, y = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return x, y


def is_strict_box(text: Any, marker: Optional[str] = "assistant\n") -> bool:
    """True when the whole answer is ``[int,int,int,int]`` (the GUI-G² format reward)."""
    s = answer_text(completion_text(text), marker).strip()
    return STRICT_BOX_RE.match(s) is not None


def format_box(box: Sequence[float]) -> str:
    """The answer string the GUI-G² prompt asks for: ``[x1,y1,x2,y2]`` with integers."""
    return "[" + ",".join(str(int(round(v))) for v in box) + "]"
