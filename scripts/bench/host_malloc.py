"""Benchmark: ``train.host_malloc`` default vs reuse, side by side, on CPU training runs (genalign/core/hostmem.py).

    python scripts/bench/host_malloc.py                                   # the tones GRPO recipe, 2 iterations
    python scripts/bench/host_malloc.py --recipes configs/toy/tones_nft.yaml configs/toy/flow_grpo.yaml \
        --iterations 3

Each recipe runs twice in fresh subprocesses (one thread, no evaluation beyond the trainer's start/end, no
checkpoints but the last), once with ``train.host_malloc=default`` (glibc's behaviour) and once with ``reuse``. Prints, per
run, the process's user and system CPU seconds and page faults, the median rollout and update seconds per
iteration (the trainer's own ``time/*`` metrics), the peak resident size, the ratios reuse / default, and whether the
two runs' training rewards agree (they must: the allocator changes no arithmetic).
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


def run(recipe: str, mode: str, iterations: int, out: str):
    cmd = [sys.executable, "-m", "genalign", "train", recipe, f"run.output_dir={out}", "run.overwrite=true",
           f"train.iterations={iterations}", "train.max_minutes=0", "train.eval_every=0",
           f"train.save_every={iterations}", "train.keep_checkpoints=1", "run.progress=false",
           "run.log_with=[none]", "train.num_threads=1", f"train.host_malloc={mode}"]
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        _, status, ru = os.wait4(p.pid, 0)  # this child's own rusage (peak RSS included)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{recipe} ({mode}) failed:\n{err.read()[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"time/' in line]
    med = lambda key: statistics.median(row[key] for row in rows) if rows and key in rows[0] else float("nan")  # noqa: E731
    return {"user": ru.ru_utime, "sys": ru.ru_stime, "faults": ru.ru_minflt, "maxrss_mb": ru.ru_maxrss / 1024,
            "rollout": med("time/rollout"), "update": med("time/update"),
            "rewards": [row.get("reward_mean") for row in rows]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="*", default=[os.path.join("configs", "toy", "tones_grpo.yaml")])
    ap.add_argument("--iterations", type=int, default=2)
    args = ap.parse_args()
    print("| recipe | host_malloc | user s | sys s | page faults | rollout s/it | update s/it | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            res = {}
            for mode in ("default", "reuse"):
                res[mode] = r = run(recipe, mode, args.iterations, os.path.join(tmp, mode))
                print(f"| {os.path.basename(recipe)} | {mode} | {r['user']:.1f} | {r['sys']:.1f} | {r['faults']:,} | "
                      f"{r['rollout']:.2f} | {r['update']:.2f} | {r['maxrss_mb']:.0f} |", flush=True)
            off, on = res["default"], res["reuse"]
            cpu = (on["user"] + on["sys"]) / (off["user"] + off["sys"])
            print(f"| {os.path.basename(recipe)} | reuse / default | CPU s (user + sys) {cpu:.2f} | | "
                  f"{on['faults'] / max(off['faults'], 1):.2f} | {on['rollout'] / off['rollout']:.2f} | "
                  f"{on['update'] / off['update']:.2f} | {on['maxrss_mb'] / off['maxrss_mb']:.2f} |")
            print(f"  training rewards identical: {on['rewards'] == off['rewards']}", flush=True)


if __name__ == "__main__":
    main()
