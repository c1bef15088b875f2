"""Which steps of a fine-tuned tones model carry its gains and its damage: sample with the run's denoiser on the
steps before K and the base's from K on (and the reverse), on the held-out prompts x seeds of tones_learning.py.

    python scripts/bench/tones_step_swap.py runs/fb/grpo runs/fb/grpo/checkpoints/checkpoint-28 --split 5

Prints correctness, FAD to real tones, FAD to the staccato exemplars and diversity for: the base, the run, and
each swap. A run trained with a window of steps 0..K-1 whose FAD recovers when the base takes over from step K
drifted on the steps it did not train (see GRPO's ``algorithm.kl_steps``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tones_learning import REPO, Metrics, generator, samples_of  # noqa: E402

sys.path.insert(0, REPO)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (its config.yaml is used)")
    ap.add_argument("checkpoint", help="one of its checkpoints")
    ap.add_argument("--split", type=int, nargs="+", default=[5], help="step index K of the swap")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--stride", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from genalign.config import load_config
    from genalign.io import read_prompts

    cfg = load_config(os.path.join(args.run, "config.yaml"))
    prompts = read_prompts(cfg.data.eval_prompts)[:: args.stride]
    run, base = generator(cfg, args.checkpoint), generator(cfg, None)
    metrics = Metrics()
    T = cfg.sampler.eval_num_steps
    ts = [float(t) for t in run.schedule(T, cfg.sampler.shift).timesteps]
    own = run.predict

    def routed(k, early, late):
        def predict(model, x, t, *a, **kw):  # the step index from the timestep (the schedule's are distinct)
            i = min(range(T), key=lambda j: abs(ts[j] - float(t)))
            return own(early if i < k else late, x, t, *a, **kw)
        return predict

    def show(tag, gen):
        x, P, _ = samples_of(gen, cfg.sampler, prompts, args.seeds)
        m = metrics(x, P, args.seeds)
        print(f"| {tag} | {m['correctness']:.3f} | {m['fad_real']:.3f} | {m['fad_staccato']:.3f} | "
              f"{m['diversity']:.3f} |", flush=True)

    print(f"held-out prompts ({len(prompts)}) x seeds 1000..{999 + args.seeds}, {T} steps")
    print("| sampler | correctness | FAD real | FAD staccato | diversity |\n|---|---|---|---|---|")
    show("base", base)
    show("run", run)
    for k in args.split:
        run.predict = routed(k, run.denoiser, base.denoiser)
        show(f"run on steps < {k}, base from {k}", run)
        run.predict = routed(k, base.denoiser, run.denoiser)
        show(f"base on steps < {k}, run from {k}", run)
        run.predict = own


if __name__ == "__main__":
    main()
