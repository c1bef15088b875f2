"""One toy training iteration, this tree against an earlier commit (default: the last commit before the
parts-and-phases trainer), side by side in one run.

    python scripts/bench/trainer_overhead.py                       # flow_grpo toy recipe, 1 thread, 3 rounds
    python scripts/bench/trainer_overhead.py --recipe configs/toy/nft.yaml --base 311b504 --rounds 5

Each round runs the same recipe for ``--iterations`` iterations in both trees (fresh subprocesses, alternating
order, same thread count, no evaluation or checkpoints) and reads the per-iteration ``seconds`` (rollout + reward +
update) that both trainers log to metrics.jsonl; the first iteration is dropped as warm-up. Prints the median
wall seconds per iteration of each tree and the ratio this/base, and the process CPU seconds per iteration (less
sensitive to other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNNER = r"""
import json, os, sys, torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from genalign.config import load_config
from genalign.trainer import Trainer
cfg = load_config(sys.argv[1], ["train.iterations=%s" % sys.argv[2], "train.eval_every=0", "train.save_every=0",
                                "run.log_with=[]", "run.progress=false", "run.output_dir=" + sys.argv[3],
                                "train.num_threads=" + os.environ["BENCH_THREADS"]])
t = Trainer(cfg)
t.setup()
t.evaluate = lambda it: {}          # time the iterations only
t.save_checkpoint = lambda: sys.argv[3]
if hasattr(t, "write_report"):
    t.write_report = lambda: None
import time
c0 = time.process_time()
t.train()
json.dump({"cpu": time.process_time() - c0}, open(os.path.join(sys.argv[3], "cpu.json"), "w"))
"""


def run(tree: str, recipe: str, iterations: int, threads: int) -> list:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": tree, "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", RUNNER, os.path.join(tree, recipe), str(iterations),
                        os.path.join(out, "run")], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rows = [json.loads(l) for l in open(os.path.join(out, "run", "metrics.jsonl"))]
        cpu = json.load(open(os.path.join(out, "run", "cpu.json")))["cpu"] / len(rows)
    return [r["seconds"] for r in rows[1:]], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="311b504", help="the commit to compare against")
    ap.add_argument("--recipe", default="configs/toy/flow_grpo.yaml")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        os.makedirs(base)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        times = {"base": [], "this": []}
        cpu = {"base": [], "this": []}
        for r in range(args.rounds):
            order = [("base", base), ("this", REPO)] if r % 2 == 0 else [("this", REPO), ("base", base)]
            for name, tree in order:
                wall, c = run(tree, args.recipe, args.iterations, args.threads)
                times[name] += wall
                cpu[name].append(c)
    import torch

    mb, mt = statistics.median(times["base"]), statistics.median(times["this"])
    print(f"device: cpu ({torch.get_num_threads()} torch threads available; runs used {args.threads}), recipe "
          f"{args.recipe}, {args.rounds} rounds × {args.iterations - 1} timed iterations")
    print(f"base {args.base}: {mb:.3f} s/iteration (median of {len(times['base'])})")
    print(f"this tree:      {mt:.3f} s/iteration (median of {len(times['this'])})")
    print(f"ratio this/base: {mt / mb:.3f} (wall)")
    cb, ct = statistics.median(cpu["base"]), statistics.median(cpu["this"])
    print(f"process CPU s/iteration (all iterations, median of rounds): base {cb:.3f}, this {ct:.3f}, "
          f"ratio {ct / cb:.3f} (the figure to trust on a shared machine)")


if __name__ == "__main__":
    main()
