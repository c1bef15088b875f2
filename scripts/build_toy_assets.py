#!/usr/bin/env python
"""Rebuild the digits toy world's assets (classifier, two base pipelines, prompts, manifest).

    HF_HUB_OFFLINE=1 python scripts/build_toy_assets.py                 # -> assets/toy/ (a few minutes, 2 cores)
    HF_HUB_OFFLINE=1 python scripts/build_toy_assets.py --out /tmp/toy --seed 1 --flow-steps 100 --no-eval

Deterministic given --seed and --threads (and the torch version). See genalign/toy/build.py for every choice.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genalign.toy.build import BuildConfig, build_assets  # noqa: E402


def main(argv=None) -> int:
    d = BuildConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "toy"),
                    help="output folder (default: the repository's assets/toy)")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads (part of determinism)")
    for name in ("classifier_steps", "vae_steps", "flow_steps", "eps_steps"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                        help=f"optimiser steps (default {getattr(d, name)})")
    ap.add_argument("--no-eval", action="store_true", help="skip sampling the bases for the manifest's metrics")
    a = ap.parse_args(argv)
    cfg = BuildConfig(seed=a.seed, threads=a.threads, classifier_steps=a.classifier_steps, vae_steps=a.vae_steps,
                      flow_steps=a.flow_steps, eps_steps=a.eps_steps, evaluate=not a.no_eval)
    m = build_assets(os.path.abspath(a.out), cfg)
    print(f"built {os.path.abspath(a.out)} in {m['build_time_s']['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
