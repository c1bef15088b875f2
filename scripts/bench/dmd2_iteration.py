"""One DMD2 iteration split into its parts: the student rollout, the fake-score phase, the generator phase, and
what the GAN head adds to each (the same phases timed with the head off and on). Median over repeats; CPU seconds
are process time (the machine may be shared), wall seconds alongside.

    python scripts/bench/dmd2_iteration.py                                  # the toy recipe (flow, 1 step)
    python scripts/bench/dmd2_iteration.py --recipe configs/toy/dmd2.yaml --set sampler.num_steps=4 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=os.path.join(REPO, "configs/toy/dmd2.yaml"))
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from genalign.cli import quiet_libraries
    from genalign.config import load_config
    from genalign.core.phases import Batch, Phase
    from genalign.trainer import Trainer

    quiet_libraries()
    out = tempfile.mkdtemp(prefix="dmd2_iter_")
    cfg = load_config(args.recipe, [f"run.output_dir={out}", "run.overwrite=true", "run.log_with=[none]",
                                    "run.progress=false", "algorithm.gan=true", "data.real=toy:digits", *args.set])
    tr = Trainer(cfg)
    tr.setup()
    alg = tr.algorithm
    fake_gan = Phase(("fake_score", "gan_head"), needs={"rollout", "real"}, name="fake_score")
    fake_plain = Phase(("fake_score",), needs={"rollout"}, name="fake_score")
    gen = Phase(("policy",), needs={"rollout"}, name="generator")
    rows = {k: [] for k in ("rollout", "fake score", "fake score + GAN D", "generator", "generator + GAN G")}
    for it in range(args.repeats):
        tr.iteration = it
        batch = Batch(iteration=it)

        def rollout():
            batch.rollout = tr.do_rollout(it)

        rows["rollout"].append(timed(rollout))
        batch.real = tr.real.batch(it, len(batch.rollout), 0)
        for gan, fph, key_f, key_g in ((False, fake_plain, "fake score", "generator"),
                                       (True, fake_gan, "fake score + GAN D", "generator + GAN G")):
            alg.gan = gan
            rows[key_f].append(timed(lambda: tr.stepper.run(fph, alg, tr.view, batch)))
            rows[key_g].append(timed(lambda: tr.stepper.run(gen, alg, tr.view, batch)))
    n = len(batch.rollout)
    print(f"{os.path.relpath(args.recipe, REPO)} {' '.join(args.set)}: {n} samples, {cfg.sampler.num_steps}-step "
          f"student, {cfg.train.optimizer_steps_per_iteration} optimiser step(s) per phase, median of {args.repeats}")
    print("| part | CPU s | wall s |\n|---|---|---|")
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in rows.items()}
    for k, (c, w) in med.items():
        print(f"| {k} | {c:.3f} | {w:.3f} |")
    over = [med["fake score + GAN D"][i] - med["fake score"][i] + med["generator + GAN G"][i] - med["generator"][i]
            for i in (0, 1)]
    print(f"| GAN overhead (D + G) | {over[0]:.3f} | {over[1]:.3f} |")


if __name__ == "__main__":
    main()
