"""Seeded synthetic GUI screenshots in ScreenSpot formats (the ``screens`` part of the toy world).

Screens are drawn with Pillow only: a title/status bar, then buttons, text fields, icons and menu tabs at
random non-overlapping places, each in a colour unique on its screen. Every element's box is exact: its
pixels span ``x1 <= x < x2``, ``y1 <= y < y2``. Instructions name the colour and the element
(``"the red Save button"``, ``"the blue star icon"``), so a tiny VLM can learn them in minutes.

Writers:

* :func:`write_screenspot` — ScreenSpot (v1) / ScreenSpot-v2 layout: ``screenspot_{platform}[_v2].json``
  with records ``{img_filename, bbox [x, y, w, h], instruction, data_type, data_source}`` and the images in
  ``screenspot_imgs/`` (v1) or ``screenspotv2_image/`` (v2).
* :func:`write_screenspot_pro` — ScreenSpot-Pro layout: ``annotations/<app>_<os>.json`` with records
  ``{img_filename, bbox [x1, y1, x2, y2], img_size [w, h], ui_type, group, platform, application, id,
  instruction}`` and the images in ``images/``.

The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write_text

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "orange": (245, 140, 20),
    "purple": (140, 50, 190),
    "yellow": (235, 210, 30),
    "cyan": (30, 200, 210),
    "pink": (240, 110, 180),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
}
LABELS = ["OK", "Save", "Cancel", "Search", "Login", "Send", "Next", "Back", "Help", "Open", "Share", "Delete",
          "Edit", "Play", "Stop", "Copy"]
FIELDS = ["search", "email", "password", "name", "address", "message"]
MENUS = ["File", "Edit", "View", "Tools", "Window", "Help"]
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross"]

# platform -> (width, height, data sources); sizes deliberately not multiples of 28 (exercises the resize map)
PLATFORMS: Dict[str, Tuple[int, int, Tuple[str, ...]]] = {
    "mobile": (200, 360, ("ios", "android")),
    "desktop": (360, 230, ("windows", "macos")),
    "web": (320, 240, ("shop", "forum", "gitlab")),
}
# ScreenSpot-Pro: group -> [(application, os)]
PRO_APPS: Dict[str, List[Tuple[str, str]]] = {
    "Dev": [("vscode", "windows")],
    "Creative": [("photoshop", "macos")],
    "CAD": [("autocad", "windows")],
    "Scientific": [("matlab", "linux")],
    "Office": [("excel", "macos")],
    "OS": [("explorer", "windows")],
}
PRO_SIZE = (448, 280)


@dataclass
class Element:
    kind: str  # button | field | icon | menu
    box: Tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive ends), original pixels
    color: str
    label: str
    instruction: str

    @property
    def data_type(self) -> str:
        return "icon" if self.kind == "icon" else "text"


@dataclass
class Screen:
    image: Image.Image
    platform: str
    elements: List[Element] = field(default_factory=list)

    @property
    def size(self) -> Tuple[int, int]:
        return self.image.size


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _overlaps(box, boxes, margin=4) -> bool:
    x1, y1, x2, y2 = box
    for b in boxes:
        if x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin:
            return True
    return False


def _draw_icon(draw: ImageDraw.ImageDraw, shape: str, box, rgb) -> None:
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=rgb)
    elif shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=rgb)
    elif shape == "star":
        draw.polygon([(cx, y1), (cx + (x2 - x1) * 0.15, cy), (x2, cy), (cx + (x2 - x1) * 0.15, cy + (y2 - y1) * 0.15),
                      (cx, y2), (cx - (x2 - x1) * 0.15, cy + (y2 - y1) * 0.15), (x1, cy),
                      (cx - (x2 - x1) * 0.15, cy)], fill=rgb)
    else:  # cross
        t = max(2, (x2 - x1) // 4)
        draw.rectangle([cx - t / 2, y1, cx + t / 2, y2], fill=rgb)
        draw.rectangle([x1, cy - t / 2, x2, cy + t / 2], fill=rgb)
    # an exact-box frame line so that the element's extent is visible
    draw.rectangle([x1, y1, x2, y2], outline=rgb)


def render_screen(rng: random.Random, width: int, height: int, platform: str, n_elements: Tuple[int, int] = (3, 6),
                  scale: float = 1.0) -> Screen:
    """Draw one screen of ``width`` x ``height`` with ``n_elements`` (min, max) targetable elements."""
    img = Image.new("RGB", (width, height), (246, 246, 246) if rng.random() < 0.5 else (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font()
    bar = max(12, int(16 * scale))
    draw.rectangle([0, 0, width - 1, bar - 1], fill=(60, 60, 70))  # title / status bar (never a target)
    colors = list(COLORS)
    rng.shuffle(colors)
    n = rng.randint(*n_elements)
    boxes: List[Tuple[int, int, int, int]] = []
    elements: List[Element] = []
    kinds = ["button", "field", "icon", "menu"]
    menu_x = 4
    for i in range(n):
        color = colors[i]
        rgb = COLORS[color]
        kind = rng.choice(kinds)
        if kind == "menu":
            label = rng.choice(MENUS)
            w, h = int((10 + 7 * len(label)) * scale), bar + int(8 * scale)
            box = (menu_x, bar + 2, menu_x + w, bar + 2 + h)
            if box[2] >= width or _overlaps(box, boxes, 2):
                kind = "icon"
            else:
                menu_x = box[2] + 4
        if kind != "menu":
            if kind == "button":
                label = rng.choice(LABELS)
                w, h = int(rng.randint(40, 80) * scale), int(rng.randint(18, 28) * scale)
            elif kind == "field":
                label = rng.choice(FIELDS)
                w, h = int(rng.randint(70, 130) * scale), int(rng.randint(16, 24) * scale)
            else:
                label = rng.choice(SHAPES)
                w = h = int(rng.randint(14, 26) * scale)
            w, h = min(w, width - 8), min(h, height - bar - 8)
            for _ in range(60):
                x1 = rng.randint(4, width - w - 4)
                y1 = rng.randint(bar + 4, height - h - 4)
                box = (x1, y1, x1 + w, y1 + h)
                if not _overlaps(box, boxes):
                    break
            else:
                continue
        x1, y1, x2, y2 = box
        if kind == "button":
            draw.rounded_rectangle([x1, y1, x2 - 1, y2 - 1], radius=4, fill=rgb)
            draw.text((x1 + 5, y1 + (y2 - y1) / 2 - 6), label, fill=(255, 255, 255), font=font)
            instruction = f"the {color} {label} button"
        elif kind == "field":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=(255, 255, 255), outline=rgb, width=2)
            draw.text((x1 + 5, y1 + (y2 - y1) / 2 - 6), label, fill=(150, 150, 150), font=font)
            instruction = f"the {color} {label} field"
        elif kind == "icon":
            _draw_icon(draw, label, box, rgb)
            instruction = f"the {color} {label} icon"
        else:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=rgb)
            draw.text((x1 + 5, y1 + 2), label, fill=(255, 255, 255), font=font)
            instruction = f"the {color} {label} menu"
        boxes.append(box)
        elements.append(Element(kind, box, color, label, instruction))
    return Screen(img, platform, elements)


def _pick_targets(rng: random.Random, screen: Screen, k: int) -> List[Element]:
    els = list(screen.elements)
    rng.shuffle(els)
    return els[: max(1, min(k, len(els)))]


def write_screenspot(out_dir: str, screens_per_platform: int = 8, seed: int = 0, version: str = "v2",
                     platforms: Sequence[str] = ("mobile", "desktop", "web"), targets_per_screen: int = 2) -> Dict:
    """Write a synthetic ScreenSpot (``version='v1'``) or ScreenSpot-v2 (``'v2'``) set; return a summary."""
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be v1 or v2, got {version!r}")
    img_dir_name = "screenspotv2_image" if version == "v2" else "screenspot_imgs"
    os.makedirs(os.path.join(out_dir, img_dir_name), exist_ok=True)
    rng = random.Random(seed)
    summary = {"benchmark": "screenspot-v2" if version == "v2" else "screenspot", "seed": seed, "files": {}}
    for platform in platforms:
        width, height, sources = PLATFORMS[platform]
        records = []
        for s in range(screens_per_platform):
            source = sources[s % len(sources)]
            screen = render_screen(rng, width, height, platform)
            name = f"{platform}_{s:04d}.png"
            screen.image.save(os.path.join(out_dir, img_dir_name, name))
            for el in _pick_targets(rng, screen, targets_per_screen):
                x1, y1, x2, y2 = el.box
                records.append({
                    "img_filename": name,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "instruction": el.instruction,
                    "data_type": el.data_type,
                    "data_source": source,
                })
        fname = f"screenspot_{platform}_v2.json" if version == "v2" else f"screenspot_{platform}.json"
        atomic_write_text(os.path.join(out_dir, fname), json.dumps(records, indent=1))
        summary["files"][fname] = len(records)
    return summary


def write_screenspot_pro(out_dir: str, screens_per_app: int = 4, seed: int = 0,
                         groups: Optional[Sequence[str]] = None, targets_per_screen: int = 2) -> Dict:
    """Write a synthetic ScreenSpot-Pro set (``annotations/<app>_<os>.json`` + ``images/``); return a summary."""
    groups = list(groups or PRO_APPS)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    rng = random.Random(seed)
    summary = {"benchmark": "screenspot-pro", "seed": seed, "files": {}}
    width, height = PRO_SIZE
    for group in groups:
        for app, osname in PRO_APPS[group]:
            sub = f"{app}_{osname}"
            os.makedirs(os.path.join(out_dir, "images", sub), exist_ok=True)
            records = []
            for s in range(screens_per_app):
                screen = render_screen(rng, width, height, "desktop", n_elements=(4, 7), scale=0.8)
                name = f"{sub}/{sub}_{s:04d}.png"
                screen.image.save(os.path.join(out_dir, "images", name))
                for j, el in enumerate(_pick_targets(rng, screen, targets_per_screen)):
                    records.append({
                        "img_filename": name,
                        "bbox": list(el.box),
                        "img_size": [width, height],
                        "instruction": el.instruction,
                        "id": f"{sub}_{s:04d}_{j}",
                        "application": app,
                        "platform": osname,
                        "group": group,
                        "ui_type": el.data_type,
                    })
            fname = os.path.join("annotations", f"{sub}.json")
            atomic_write_text(os.path.join(out_dir, fname), json.dumps(records, indent=1))
            summary["files"][fname] = len(records)
    return summary
