"""ScreenSpot / ScreenSpot-v2 / ScreenSpot-Pro evaluation (METHODS.md §12, "Metric").

The click is the predicted point, or the centre of the predicted box, mapped from the predictor's frame to
[0, 1]; it is a hit when it lies inside the ground-truth box normalised by the image size, edges included.
Accuracy is reported per split (platform or Pro group x text/icon), with both a **macro** mean (over splits)
and a **micro** mean (over samples); unparseable outputs are misses counted in ``wrong_format``.

A predictor is any callable ``predictor(images, instructions) -> list`` whose items are model text (parsed
with :func:`~genalign.gui.coords.parse_click`), a point ``(x, y)``, a box ``(x1, y1, x2, y2)`` or ``None``,
in the frame named by its ``coord_frame`` attribute (default ``pixel``). For the ``resized`` frame it also
exposes ``pixels = (min_pixels, max_pixels, factor)``. :class:`VLMPredictor` wraps a Qwen2-VL-style model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import GenalignError
from .coords import FRAMES, box_center, convert_coords, parse_click, processor_pixels, resized_size, set_processor_pixels
from .data import GUI_G2_PROMPT, GroundingSample, build_messages


def click_point(output: Any) -> Optional[Tuple[float, float]]:
    """The click of one predictor output (text, point, box or None), in the predictor's frame."""
    if output is None:
        return None
    if isinstance(output, str) or (isinstance(output, (list, tuple)) and output and isinstance(output[0], dict)):
        return parse_click(output)
    try:
        vals = [float(v) for v in output]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in vals):
        return None
    if len(vals) == 2:
        return vals[0], vals[1]
    if len(vals) == 4:
        return box_center(vals)
    return None


def _jsonable(out: Any) -> Any:
    if out is None or isinstance(out, str):
        return out
    try:
        return [float(v) for v in out]
    except (TypeError, ValueError):
        return str(out)


def is_hit(point_norm: Tuple[float, float], bbox: Sequence[float], size: Sequence[int]) -> bool:
    """Inclusive hit test in the normalised frame."""
    x1, y1, x2, y2 = bbox[0] / size[0], bbox[1] / size[1], bbox[2] / size[0], bbox[3] / size[1]
    px, py = point_norm
    return x1 <= px <= x2 and y1 <= py <= y2


def evaluate(
    samples: Sequence[GroundingSample],
    predictor: Callable[[List[Any], List[str]], List[Any]],
    batch_size: int = 8,
    coord_frame: Optional[str] = None,
    pixels: Optional[Tuple[int, int, int]] = None,
    progress: bool = True,
    benchmark: str = "",
    keep_records: bool = True,
) -> Dict[str, Any]:
    """Run ``predictor`` over ``samples`` in batches and score clicks; return the JSON-able report."""
    from tqdm.auto import tqdm

    if batch_size <= 0:
        raise GenalignError(f"batch size must be > 0, got {batch_size}")
    frame = coord_frame or getattr(predictor, "coord_frame", "pixel")
    if frame not in FRAMES:
        raise GenalignError(f"unknown coordinate frame '{frame}'; valid choices: {', '.join(FRAMES)}")
    pixels = pixels or getattr(predictor, "pixels", None)
    if frame == "resized" and pixels is None:
        raise GenalignError("the 'resized' frame needs the processor's (min_pixels, max_pixels, factor)")
    splits: Dict[str, Dict[str, int]] = {}
    records = []
    bar = tqdm(total=len(samples), desc=f"eval {benchmark}".strip(), disable=not progress, unit="sample")
    for start in range(0, len(samples), batch_size):
        batch = list(samples[start:start + batch_size])
        images = [s.load_image() for s in batch]
        outputs = list(predictor(images, [s.instruction for s in batch]))
        if len(outputs) != len(batch):
            raise GenalignError(f"predictor returned {len(outputs)} outputs for {len(batch)} samples")
        for s, out in zip(batch, outputs):
            st = splits.setdefault(s.split, {"n": 0, "hits": 0, "wrong_format": 0})
            st["n"] += 1
            pt = click_point(out)
            hit = False
            norm = None
            if pt is None:
                st["wrong_format"] += 1
            else:
                rsz = resized_size(s.size[0], s.size[1], *pixels) if frame == "resized" else None
                norm = convert_coords(pt, frame, "norm", s.size, rsz)
                hit = is_hit(norm, s.bbox, s.size)
                st["hits"] += int(hit)
            if keep_records:
                records.append({"id": s.id, "split": s.split, "instruction": s.instruction, "output": _jsonable(out),
                                "click_norm": norm, "bbox": list(s.bbox), "size": list(s.size), "hit": hit})
        bar.update(len(batch))
    bar.close()
    return make_report(splits, benchmark=benchmark, records=records if keep_records else None)


def make_report(splits: Dict[str, Dict[str, int]], benchmark: str = "", records=None) -> Dict[str, Any]:
    total = sum(v["n"] for v in splits.values())
    hits = sum(v["hits"] for v in splits.values())
    out_splits = {k: {**v, "accuracy": v["hits"] / v["n"] if v["n"] else 0.0} for k, v in sorted(splits.items())}
    by_type: Dict[str, Dict[str, float]] = {}
    for k, v in splits.items():
        t = k.rsplit("-", 1)[-1]
        d = by_type.setdefault(t, {"n": 0, "hits": 0})
        d["n"] += v["n"]
        d["hits"] += v["hits"]
    for d in by_type.values():
        d["accuracy"] = d["hits"] / d["n"] if d["n"] else 0.0
    report = {
        "benchmark": benchmark,
        "num_samples": total,
        "splits": out_splits,
        "by_type": dict(sorted(by_type.items())),
        "macro_accuracy": (sum(v["accuracy"] for v in out_splits.values()) / len(out_splits)) if out_splits else 0.0,
        "micro_accuracy": hits / total if total else 0.0,
        "wrong_format": sum(v["wrong_format"] for v in splits.values()),
    }
    if records is not None:
        report["records"] = records
    return report


def format_table(report: Dict[str, Any]) -> str:
    """A readable table of a report."""
    lines = [f"{'split':<24}{'n':>6}{'hits':>7}{'acc %':>9}{'wrong_fmt':>11}"]
    for k, v in report["splits"].items():
        lines.append(f"{k:<24}{v['n']:>6}{v['hits']:>7}{100 * v['accuracy']:>9.1f}{v['wrong_format']:>11}")
    for k, v in report.get("by_type", {}).items():
        lines.append(f"{'all-' + k:<24}{v['n']:>6}{v['hits']:>7}{100 * v['accuracy']:>9.1f}{'':>11}")
    lines.append(f"{'macro (mean of splits)':<24}{'':>6}{'':>7}{100 * report['macro_accuracy']:>9.1f}")
    lines.append(f"{'micro (over samples)':<24}{report['num_samples']:>6}{'':>7}"
                 f"{100 * report['micro_accuracy']:>9.1f}{report['wrong_format']:>11}")
    return "\n".join(lines)


class VLMPredictor:
    """Greedy batched grounding with a Qwen2-VL / Qwen2.5-VL-style model and its processor.

    ``model`` is a hub id / local path (loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor``)
    or an already-built model (then pass ``processor``). ``min_pixels`` / ``max_pixels`` override the
    processor's resize bounds; the bounds actually used are exposed as ``pixels`` for the frame mapping.
    """

    def __init__(self, model: Any, processor: Any = None, *, coord_frame: str = "resized",
                 min_pixels: Optional[int] = None, max_pixels: Optional[int] = None, max_new_tokens: int = 32,
                 device: Optional[str] = None, dtype: str = "auto", template: str = GUI_G2_PROMPT,
                 trust_remote_code: bool = False):
        import torch

        if isinstance(model, str):
            model, processor = load_vlm(model, dtype=dtype, trust_remote_code=trust_remote_code)
        if processor is None:
            raise GenalignError("VLMPredictor needs the model's processor when given a model object")
        if coord_frame not in FRAMES:
            raise GenalignError(f"unknown coordinate frame '{coord_frame}'; valid choices: {', '.join(FRAMES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        if min_pixels is not None or max_pixels is not None:
            cur_min, cur_max, _ = processor_pixels(processor)
            set_processor_pixels(processor, min_pixels or cur_min, max_pixels or cur_max)
        self.pixels = processor_pixels(processor)
        self.coord_frame = coord_frame
        self.max_new_tokens = max_new_tokens
        self.template = template

    def __call__(self, images: List[Any], instructions: List[str]) -> List[str]:
        import torch

        tok = getattr(self.processor, "tokenizer", self.processor)
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            conv = [build_messages(ins, self.template, img) for img, ins in zip(images, instructions)]
            inputs = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True, return_tensors="pt",
                                                        processor_kwargs={"padding": True})
        finally:
            tok.padding_side = old_side
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = tok.batch_decode(new, skip_special_tokens=False)
        strip = [t for t in (tok.eos_token, tok.pad_token, "<|im_end|>", "<|endoftext|>") if t]
        cleaned = []
        for t in texts:
            for s in strip:
                t = t.split(s)[0] if s in (tok.eos_token, "<|im_end|>") else t.replace(s, "")
            cleaned.append(t.strip())
        return cleaned


def load_vlm(path: str, dtype: str = "auto", trust_remote_code: bool = False):
    """Load a Qwen2-VL-style model and its processor from a hub id or a local directory."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtypes = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise GenalignError(f"unknown dtype '{dtype}'; valid choices: {', '.join(dtypes)}")
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtypes[dtype],
                                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise GenalignError(f"cannot load the VLM '{path}': {str(e).splitlines()[0]}") from None
    return model, processor
