"""Benchmark: the two CPU work-avoiders of a tones run, side by side: ``train.host_malloc`` (genalign/core/hostmem.py)
and the Oobleck codec's inert residual units (``skip_inert_residual_units``, genalign/models/speed.py).

    python scripts/bench/cpu_speed.py                                     # the tones GRPO recipe, 2 iterations
    python scripts/bench/cpu_speed.py --recipes configs/toy/tones_grpo.yaml configs/toy/tones_nft.yaml \
        --iterations 3

Each recipe runs three times in fresh subprocesses (one thread, no evaluation beyond the trainer's start/end, one
checkpoint at the end): ``before`` (glibc's malloc behaviour, every unit computed: ``train.host_malloc=default``,
``GENALIGN_SPEED_OFF=inert_units``), ``malloc`` (``train.host_malloc=reuse`` only) and ``both`` (the defaults on a
CPU run). Prints, per run, the process's user and system CPU seconds and page faults, the median rollout and update
seconds per iteration (the trainer's own ``time/*`` metrics), the peak resident size, the ratios to ``before``,
and whether the runs' training rewards agree (they must: neither changes the arithmetic).
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


VARIANTS = {"before": ("default", "inert_units"), "malloc": ("reuse", "inert_units"), "both": ("reuse", "")}


def run(recipe: str, variant: str, iterations: int, out: str):
    mode, off = VARIANTS[variant]
    cmd = [sys.executable, "-m", "genalign", "train", recipe, f"run.output_dir={out}", "run.overwrite=true",
           f"train.iterations={iterations}", "train.max_minutes=0", "train.eval_every=0",
           f"train.save_every={iterations}", "train.keep_checkpoints=1", "run.progress=false",
           "run.log_with=[none]", "train.num_threads=1", f"train.host_malloc={mode}"]
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", GENALIGN_SPEED_OFF=off))
        _, status, ru = os.wait4(p.pid, 0)  # this child's own rusage (peak RSS included)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{recipe} ({variant}) failed:\n{err.read()[-3000:]}")
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
    print("| recipe | variant | user s | sys s | page faults | rollout s/it | update s/it | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            name, res = os.path.basename(recipe), {}
            for v in VARIANTS:
                res[v] = r = run(recipe, v, args.iterations, os.path.join(tmp, v))
                print(f"| {name} | {v} | {r['user']:.1f} | {r['sys']:.1f} | {r['faults']:,} | {r['rollout']:.2f} | "
                      f"{r['update']:.2f} | {r['maxrss_mb']:.0f} |", flush=True)
            b = res["before"]
            for v in list(VARIANTS)[1:]:
                r = res[v]
                cpu = (r["user"] + r["sys"]) / (b["user"] + b["sys"])
                print(f"| {name} | {v} / before | CPU s (user + sys) **{cpu:.2f}** | | {r['faults'] / max(b['faults'], 1):.2f} "
                      f"| {r['rollout'] / b['rollout']:.2f} | {r['update'] / b['update']:.2f} | "
                      f"{r['maxrss_mb'] / b['maxrss_mb']:.2f} |")
            same = all(res[v]["rewards"] == b["rewards"] for v in VARIANTS)
            print(f"  {name}: training rewards identical in all three: {same}", flush=True)

if __name__ == "__main__":
    main()
