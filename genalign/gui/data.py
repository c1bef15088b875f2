"""ScreenSpot-style data: loading the three benchmark layouts, the GUI-G² prompt, rows for trl.

A :class:`GroundingSample` is one (screenshot, instruction, target box) with its split label
(``<platform>-<text|icon>`` for ScreenSpot / -v2, ``<group>-<text|icon>`` for ScreenSpot-Pro) and its box
in original pixels ``[x1, y1, x2, y2]``. The same loader feeds evaluation and GRPO training.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import GenalignError, choices
from .coords import convert_coords, resized_size, xywh_to_xyxy

BENCHMARKS = ("screenspot", "screenspot-v2", "screenspot-pro")

# GUI-G² prompt (METHODS.md §12): one user turn, image first, no system prompt, no chain of thought.
GUI_G2_PROMPT = ("Outline the position corresponding to the instruction: {instruction}. "
                 "The output should be only [x1,y1,x2,y2].")

_V1_IMAGE_DIRS = ("screenspot_imgs", "images", "")
_V2_IMAGE_DIRS = ("screenspotv2_image", "screenspot_imgs", "images", "")
_PRO_IMAGE_DIRS = ("images", "")


@dataclass
class GroundingSample:
    image_path: str
    instruction: str
    bbox: Tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels
    size: Tuple[int, int]  # (width, height) of the original image
    split: str  # e.g. "mobile-text" or "CAD-icon"
    data_type: str  # text | icon
    id: str = ""
    source: str = ""

    def load_image(self):
        from PIL import Image

        try:
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise GenalignError(f"cannot read image '{self.image_path}': {e}") from None


def build_prompt(instruction: str, template: str = GUI_G2_PROMPT) -> str:
    return template.format(instruction=instruction.rstrip(". "))


def build_messages(instruction: str, template: str = GUI_G2_PROMPT, image: Any = None) -> List[Dict[str, Any]]:
    """One user turn: the image first, then the GUI-G² text."""
    image_part: Dict[str, Any] = {"type": "image"}
    if image is not None:
        image_part["image"] = image
    return [{"role": "user", "content": [image_part, {"type": "text", "text": build_prompt(instruction, template)}]}]


def _read_json(path: str) -> List[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise GenalignError(f"cannot read annotation file '{path}': {e}") from None
    if not isinstance(data, list):
        raise GenalignError(f"annotation file '{path}' must hold a JSON list of samples")
    return data


def _find_image(data_dir: str, image_dir: Optional[str], candidates: Sequence[str], name: str) -> str:
    roots = [image_dir] if image_dir else [os.path.join(data_dir, c) for c in candidates]
    for r in roots:
        p = os.path.join(r, name)
        if os.path.exists(p):
            return p
    raise GenalignError(f"image '{name}' not found under {', '.join(roots)}; pass --image-dir")


def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise GenalignError(f"cannot read image '{path}': {e}") from None


def _field(rec: Dict[str, Any], key: str, path: str):
    if key not in rec:
        raise GenalignError(f"sample in '{path}' lacks the field '{key}'")
    return rec[key]


def load_benchmark(benchmark: str, data_dir: str, image_dir: Optional[str] = None,
                   limit: Optional[int] = None) -> List[GroundingSample]:
    """Load a ScreenSpot / ScreenSpot-v2 / ScreenSpot-Pro directory (see :mod:`genalign.gui.screens`)."""
    if benchmark not in BENCHMARKS:
        raise GenalignError(f"unknown benchmark '{benchmark}'; valid choices: {choices(BENCHMARKS)}")
    if not os.path.isdir(data_dir):
        raise GenalignError(f"benchmark directory '{data_dir}' does not exist")
    samples: List[GroundingSample] = []
    if benchmark == "screenspot-pro":
        files = sorted(glob.glob(os.path.join(data_dir, "annotations", "*.json")))
        if not files:
            raise GenalignError(f"no annotations/<app>_<os>.json files in '{data_dir}' (ScreenSpot-Pro layout)")
        for path in files:
            for i, rec in enumerate(_read_json(path)):
                img = _find_image(data_dir, image_dir, _PRO_IMAGE_DIRS, _field(rec, "img_filename", path))
                bbox = [float(v) for v in _field(rec, "bbox", path)]
                size = tuple(int(v) for v in rec["img_size"]) if "img_size" in rec else _image_size(img)
                ui_type = _field(rec, "ui_type", path)
                samples.append(GroundingSample(
                    img, _field(rec, "instruction", path), tuple(bbox), size,  # type: ignore[arg-type]
                    f"{_field(rec, 'group', path)}-{ui_type}", ui_type, str(rec.get("id", f"{path}:{i}")),
                    f"{rec.get('application', '')}_{rec.get('platform', '')}"))
    else:
        suffix = "_v2" if benchmark == "screenspot-v2" else ""
        dirs = _V2_IMAGE_DIRS if suffix else _V1_IMAGE_DIRS
        found = False
        for platform in ("mobile", "desktop", "web"):
            path = os.path.join(data_dir, f"screenspot_{platform}{suffix}.json")
            if not os.path.exists(path):
                continue
            found = True
            for i, rec in enumerate(_read_json(path)):
                img = _find_image(data_dir, image_dir, dirs, _field(rec, "img_filename", path))
                bbox = xywh_to_xyxy(_field(rec, "bbox", path))
                dtype = _field(rec, "data_type", path)
                samples.append(GroundingSample(
                    img, _field(rec, "instruction", path), tuple(bbox), _image_size(img),  # type: ignore[arg-type]
                    f"{platform}-{dtype}", dtype, f"{platform}:{i}", str(rec.get("data_source", ""))))
        if not found:
            raise GenalignError(
                f"no screenspot_{{mobile,desktop,web}}{suffix}.json files in '{data_dir}' ({benchmark} layout)")
    if limit is not None and limit > 0:
        samples = samples[:limit]
    return samples


def grpo_rows(samples: Sequence[GroundingSample], min_pixels: int, max_pixels: int, factor: int = 28,
              coord_frame: str = "resized", template: str = GUI_G2_PROMPT) -> List[Dict[str, Any]]:
    """Dataset rows for ``trl.GRPOTrainer``: ``prompt`` (conversational, text only — trl inserts the image),
    ``image`` (path), ``bbox`` (ground truth in the model's frame), ``image_size`` and ``resized_size``."""
    rows = []
    for s in samples:
        rsz = resized_size(s.size[0], s.size[1], min_pixels, max_pixels, factor)
        rows.append({
            "prompt": [{"role": "user", "content": build_prompt(s.instruction, template)}],
            "image": s.image_path,
            "bbox": convert_coords(s.bbox, "pixel", coord_frame, s.size, rsz),
            "image_size": list(s.size),
            "resized_size": list(rsz),
            "instruction": s.instruction,
        })
    return rows
