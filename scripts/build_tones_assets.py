#!/usr/bin/env python
"""Rebuild the tones toy world's assets (toy CLAP, real reference clips, staccato exemplars, prompts, manifest).

    python scripts/build_tones_assets.py                      # -> assets/tones/ (about a minute on 1 core)
    python scripts/build_tones_assets.py --out /tmp/tones --seed 1 --steps 300

Deterministic given --seed and --threads (and the torch version): the stored tensors are identical. See genalign/tones/build.py for every choice.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from genalign.tones.build import BuildConfig, build_assets  # noqa: E402


def main(argv=None) -> int:
    d = BuildConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "tones"),
                    help="output folder (default: the repository's assets/tones)")
    for name, help_ in (("seed", "seed of every random draw"), ("threads", "torch intra-op threads (part of determinism)"),
                        ("train_clips", "training clips (fixed pool)"), ("steps", "optimiser steps"),
                        ("batch_size", "clips per contrastive batch"), ("real_clips", "clips in real.safetensors"),
                        ("staccato_clips", "clips in exemplars/staccato.safetensors")):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                        help=f"{help_} (default {getattr(d, name)})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    ap.add_argument("--pitch-floor", type=float, default=d.pitch_floor,
                    help=f"the toy CLAP's pitch-feature floor, a share of the clip's power (default {d.pitch_floor})")
    a = ap.parse_args(argv)
    cfg = BuildConfig(seed=a.seed, threads=a.threads, train_clips=a.train_clips, steps=a.steps, batch_size=a.batch_size,
                      lr=a.lr, real_clips=a.real_clips, staccato_clips=a.staccato_clips,
                      pitch_floor=a.pitch_floor)
    m = build_assets(os.path.abspath(a.out), cfg)
    print(f"built {os.path.abspath(a.out)} in {m['build_time_s']['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
