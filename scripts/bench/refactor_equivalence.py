"""Do the toy recipes train exactly as they did before a change? Each recipe runs the same iterations in this tree
and in an earlier commit (default: the last commit before the parts-and-phases trainer), side by side in one run;
prints, per recipe, the largest difference of the trained parameters and of the logged losses and rewards.

    python scripts/bench/refactor_equivalence.py                          # every toy recipe, 10 iterations
    python scripts/bench/refactor_equivalence.py --recipes configs/toy/flow_grpo.yaml --iterations 30

Bit-identical parameters after N iterations mean every figure measured on the old trainer at N iterations holds
on this one (the recipes are deterministic functions of (seed, iteration)).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNNER = r"""
import os, sys, torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from genalign.config import load_config
from genalign.trainer import Trainer
out = sys.argv[3]
cfg = load_config(sys.argv[1], ["train.iterations=%s" % sys.argv[2], "train.eval_every=0", "train.save_every=0",
                                "train.max_minutes=0", "run.log_with=[]", "run.progress=false",
                                "run.output_dir=" + os.path.join(out, "run")])
t = Trainer(cfg)
t.setup()
t.evaluate = lambda it: {}
t.save_checkpoint = lambda: out
if hasattr(t, "write_report"):
    t.write_report = lambda: None
t.train()
save_file({n: p.detach().contiguous() for n, p in t.generator.named_trainable_parameters()},
          os.path.join(out, "params.safetensors"))
"""


def run(tree, recipe, iterations, out):
    env = {**os.environ, "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1"}
    t0 = time.process_time()
    r = subprocess.run([sys.executable, "-c", RUNNER, os.path.join(tree, recipe), str(iterations), out], cwd=tree,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{recipe} failed in {tree}:\n{r.stderr[-3000:]}")
    from safetensors.torch import load_file

    rows = [json.loads(l) for l in open(os.path.join(out, "run", "metrics.jsonl"))]
    return load_file(os.path.join(out, "params.safetensors")), rows, time.process_time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="311b504")
    ap.add_argument("--recipes", nargs="*", default=None)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    recipes = args.recipes or sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs/toy/*.yaml")))
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        os.makedirs(base)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        print(f"{args.iterations} iterations per recipe, this tree vs {args.base}, CPU, 1 thread")
        print("| recipe | parameters | max |Δθ| | max |Δ loss| | max |Δ reward_mean| |")
        print("|---|---|---|---|---|")
        for rec in recipes:
            if not os.path.exists(os.path.join(base, rec)):
                print(f"| {rec} | (not in {args.base}) | | | |")
                continue
            pa, ra, _ = run(base, rec, args.iterations, os.path.join(tmp, "a"))
            pb, rb, _ = run(REPO, rec, args.iterations, os.path.join(tmp, "b"))
            if sorted(pa) != sorted(pb):
                print(f"| {rec} | different parameter names | | | |")
                continue
            d = max(float((pa[k].double() - pb[k].double()).abs().max()) for k in pa)

            def diff(key):
                vals = [abs(x.get(key, float("nan")) - y.get(key, float("nan"))) for x, y in zip(ra, rb)]
                vals = [v for v in vals if v == v]
                return max(vals) if vals else float("nan")

            print(f"| {rec} | {sum(v.numel() for v in pa.values())} | {d:.3g} | {diff('loss'):.3g} | "
                  f"{diff('reward_mean'):.3g} |", flush=True)
            for sub in ("a", "b"):
                subprocess.run(["rm", "-rf", os.path.join(tmp, sub)])


if __name__ == "__main__":
    main()
