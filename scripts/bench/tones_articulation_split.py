"""Where a tones model's tone_correctness falls short, split by articulation: staccato vs legato held-out prompts.

    python scripts/bench/tones_articulation_split.py                                  # the shipped base
    python scripts/bench/tones_articulation_split.py --pipeline runs/clean            # another pipeline folder
    python scripts/bench/tones_articulation_split.py --checkpoint runs/fe/nft_ref0.1/checkpoints/checkpoint-250

Prompts: assets/tones/prompts/eval.txt[::3] (24 held-out captions: 6 staccato, 18 legato) x seeds 1000.. (--seeds),
the tones recipes' deterministic 10-step sampler at CFG 3 (configs/toy/tones_grpo.yaml). Per articulation it prints
the mean tone_correctness and its two factors (``explained``: the share of the clip's power within ±50 cents of the
expected notes' harmonics; ``present``: whether every expected fundamental carries its share), and ``near miss``:
the share of power within 150 cents of a harmonic but outside the reward's ±50 (pitch spread of an imprecise note).
First, over all the prompts: tone_correctness, FAD to the real clips and to the staccato exemplars, and per-prompt
diversity (scripts/bench/tones_learning.py's metrics).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def factors(x: torch.Tensor, prompts, sample_rate: int):
    """Per clip (explained, present, near miss) of the tone_correctness reward (genalign.tones.rewards)."""
    from genalign.tones.data import prompt_notes
    from genalign.tones.rewards import tone_correctness_factors

    return tone_correctness_factors(x, prompt_notes(prompts), sample_rate)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default=None, help="a tones pipeline folder (default: the shipped base)")
    ap.add_argument("--checkpoint", default=None, help="a genalign checkpoint of a tones run, on top of the pipeline")
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from tones_learning import Metrics, generator, samples_of

    from genalign.config import load_config
    from genalign.io import read_prompts

    over = [f"model.path={args.pipeline}"] if args.pipeline else []
    cfg = load_config(os.path.join(REPO, "configs", "toy", "tones_grpo.yaml"), over)
    gen = generator(cfg, args.checkpoint)
    prompts = read_prompts(os.path.join(REPO, cfg.data.eval_prompts))[::3]
    x, P, _ = samples_of(gen, cfg.sampler, prompts, args.seeds)
    m = Metrics()(x, P, args.seeds)
    print(f"all: {len(prompts)} prompts x {args.seeds} seeds: tone_correctness {m['correctness']:.3f}, FAD real "
          f"{m['fad_real']:.2f}, FAD staccato {m['fad_staccato']:.2f}, diversity {m['diversity']:.3f}")
    c, f = m["per"]["correctness"], factors(x, P, cfg.model.sample_rate)
    for art in ("staccato", "legato"):
        idx = [i for i, p in enumerate(P) if art in p]
        print(f"{art}: {len(idx) // args.seeds} prompts x {args.seeds} seeds: tone_correctness "
              f"{float(c[idx].mean()):.3f}, explained {float(f[idx, 0].mean()):.3f}, present "
              f"{float(f[idx, 1].mean()):.3f}, near miss {float(f[idx, 2].mean()):.3f}")


if __name__ == "__main__":
    main()
