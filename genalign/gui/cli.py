"""Command-line entry points of the GUI track.

``genalign eval --benchmark screenspot-v2 --data DIR --model PATH --out report.json`` forwards to
:func:`eval_main`; ``python -m genalign.gui.cli screens --out DIR`` writes a synthetic benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..errors import GenalignError
from .coords import FRAMES
from .data import BENCHMARKS


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genalign eval", description="Evaluate a VLM on ScreenSpot / -v2 / -Pro.")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="Benchmark layout of --data.")
    p.add_argument("--data", required=True, help="Benchmark directory (json files + images).")
    p.add_argument("--image-dir", default=None, help="Image folder, if not the benchmark's default sub-folder.")
    p.add_argument("--model", required=True, help="Hub id or local path of a Qwen2-VL-style model.")
    p.add_argument("--out", default=None, help="Write the JSON report here.")
    p.add_argument("--batch-size", type=int, default=8, help="Samples per generate call.")
    p.add_argument("--min-pixels", type=int, default=None, help="Processor min_pixels (default: the processor's).")
    p.add_argument("--max-pixels", type=int, default=None, help="Processor max_pixels (default: the processor's).")
    p.add_argument("--coord-frame", default="resized", choices=FRAMES,
                   help="Frame of the model's coordinates: resized (Qwen2.5-VL), norm1000 (Qwen2-VL), norm, pixel.")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Generation length.")
    p.add_argument("--limit", type=int, default=None, help="Evaluate the first N samples only.")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available).")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="Model dtype.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    p.add_argument("--no-records", action="store_true", help="Leave per-sample records out of the report.")
    p.add_argument("--trust-remote-code", action="store_true", help="Allow custom model code from the hub.")
    return p


def eval_main(argv: List[str]) -> int:
    """Run a ScreenSpot-family evaluation; print a table; return 0 (user errors raise GenalignError)."""
    from ..io import atomic_write_json
    from .data import load_benchmark
    from .evaluate import VLMPredictor, evaluate, format_table

    args = _eval_parser().parse_args(argv)
    if args.batch_size <= 0:
        raise GenalignError(f"--batch-size must be > 0, got {args.batch_size}")
    samples = load_benchmark(args.benchmark, args.data, image_dir=args.image_dir, limit=args.limit)
    predictor = VLMPredictor(args.model, coord_frame=args.coord_frame, min_pixels=args.min_pixels,
                             max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens, device=args.device,
                             dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    report = evaluate(samples, predictor, batch_size=args.batch_size, progress=not args.no_progress,
                      benchmark=args.benchmark, keep_records=not args.no_records)
    report["model"] = args.model
    report["coord_frame"] = args.coord_frame
    report["min_pixels"], report["max_pixels"], report["factor"] = predictor.pixels
    print(format_table(report))
    if args.out:
        atomic_write_json(args.out, report)
        print(f"report written to {args.out}")
    return 0


def screens_main(argv: List[str]) -> int:
    """Write a synthetic ScreenSpot-v2 / v1 / Pro benchmark directory."""
    from .screens import write_screenspot, write_screenspot_pro

    p = argparse.ArgumentParser(prog="genalign-gui screens", description="Write synthetic ScreenSpot screens.")
    p.add_argument("--out", required=True, help="Output directory.")
    p.add_argument("--benchmark", default="screenspot-v2", choices=BENCHMARKS, help="Layout to write.")
    p.add_argument("--screens", type=int, default=8, help="Screens per platform (per app for -pro).")
    p.add_argument("--targets", type=int, default=2, help="Instructions per screen.")
    p.add_argument("--seed", type=int, default=0, help="Random seed.")
    args = p.parse_args(argv)
    if args.benchmark == "screenspot-pro":
        summary = write_screenspot_pro(args.out, args.screens, args.seed, targets_per_screen=args.targets)
    else:
        summary = write_screenspot(args.out, args.screens, args.seed,
                                   version="v2" if args.benchmark == "screenspot-v2" else "v1",
                                   targets_per_screen=args.targets)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"eval": eval_main, "screens": screens_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m genalign.gui.cli {eval,screens} ...", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except GenalignError as e:
        print(f"genalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
