"""Benchmark: one training iteration at the shipped SD3.5 Flow-GRPO recipe's settings on the tiny random SD3,
this checkout against a base commit, side by side in one run, with what each optimisation contributes.

    python scripts/bench/iteration_speed.py                       # base = BASE_COMMIT below, 1 thread
    python scripts/bench/iteration_speed.py --base main~3 --threads 2 --iterations 3 --rounds 2

The base commit is extracted with ``git archive`` into a temporary folder; every variant runs in its own
subprocess (PYTHONPATH = its tree, the same thread count, the same tiny pipeline), rounds interleaved so that a
noisy neighbour slows all variants alike. Each tree trains with *its own* copy of the recipe
(configs/sd35/flow_grpo_pickscore.yaml): 10 SDE steps, CFG 4.5, 9 trained steps, G 24, per-GPU batch 9, 2 optimiser
steps, KL β 0.01, LoRA r 32 / α 64, gradient checkpointing, T5 length as the recipe says. CPU stand-ins: the tiny
SD3 (32 px), fp32, a brightness reward instead of PickScore, ``--prompts`` prompts per iteration instead of 48.

Variants: ``base``, ``this``, and ``this`` with one optimisation undone: ``t5_256`` (model.max_sequence_length=256,
diffusers' default, which the base recipe used), ``encode_cache`` / ``adapter_toggle`` (GENALIGN_SPEED_OFF, see
genalign/models/speed.py); optional ``compile`` (model.compile=true; use --warmup 1 so that compiling is not timed):
``--variants this,compile --warmup 1``. Prints per-iteration seconds (median; CPU seconds of the worker process, which on a shared machine measure the work
where wall time measures the neighbours too; wall time is printed beside) split rollout / reward / update and the
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = "configs/sd35/flow_grpo_pickscore.yaml"
BASE_COMMIT = "efa107b"  # main before issue 16 ("speed and scale")
VARIANTS = {  # name -> (tree, extra overrides, GENALIGN_SPEED_OFF)
    "base": ("base", {}, ""),
    "this": ("this", {}, ""),
    "t5_256": ("this", {"model.max_sequence_length": 256}, ""),
    "encode_cache": ("this", {}, "encode_cache"),
    "adapter_toggle": ("this", {}, "adapter_toggle"),
    "compile": ("this", {"model.compile": True}, ""),  # not a default: compare with --warmup 1 (compilation)
}
DEFAULT_VARIANTS = "base,this,t5_256,encode_cache,adapter_toggle"
EXPLAIN = {
    "t5_256": "T5 length 128 as the reference (recipe)",
    "encode_cache": "each unique prompt / the negative encoded once",
    "adapter_toggle": "reference on/off without PEFT version checks",
}


# ------------------------------------------------------------------------------------------------------ worker
def set_key(raw: dict, dotted: str, value) -> None:
    cur = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def worker(a) -> None:
    import torch
    import yaml

    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.tree)
    os.chdir(a.tree)
    import types

    import genalign.trainer as trainer_mod
    from genalign.config import build_config
    from genalign.trainer import Trainer

    # The trainer's rollout / reward / update split, in this process's CPU seconds: on a machine shared with other
    # jobs, wall time measures the neighbours; with a fixed thread count, CPU time measures the work.
    trainer_mod.time = types.SimpleNamespace(time=time.process_time)

    raw = yaml.safe_load(open(os.path.join(a.tree, RECIPE)))
    over = {"model.path": a.pipeline, "model.height": 32, "model.width": 32, "model.dtype": "fp32",
            "train.mixed_precision": "no", "data.prompts_per_iteration": a.prompts, "train.num_threads": a.threads,
            "train.eval_every": 0, "train.save_every": 0, "run.output_dir": a.out, "run.log_with": ["none"],
            "run.progress": False, "run.overwrite": True, "data.eval_prompts": ["a cat"], "data.eval_seeds": [0]}
    over.update(json.loads(a.overrides))
    for k, v in over.items():
        set_key(raw, k, v)
    raw["rewards"] = [{"name": "brightness"}]
    cfg = build_config(raw, [])
    tr = Trainer(cfg)
    tr.setup()
    rows = []
    for it in range(a.warmup + a.iterations):
        tr.iteration = it
        t, c = time.perf_counter(), time.process_time()
        m = tr.iterate(it)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if it >= a.warmup:
            rows.append({"seconds": cpu, "wall": wall, "rollout": m["time/rollout"], "reward": m["time/reward"],
                         "update": m["time/update"], "loss": m["loss"]})
    print("RESULT " + json.dumps({"rows": rows, "max_sequence_length": cfg.model.max_sequence_length,
                                  "trajectories": tr.n_local}), flush=True)


def micro(a) -> None:
    """Per-call costs of the two work-avoiding shortcuts, each way, in this tree (CPU seconds, many repeats): the
    batch conditioning of one rollout batch (9 samples of one prompt, as G 24 / batch 9 gives) and one reference
    on/off toggle pair. Their effect on a whole iteration is below the noise of a shared machine; these are not."""
    import torch

    torch.set_num_threads(a.threads)
    from genalign.config import ModelConfig
    from genalign.models.sd3 import SD3Generator

    cfg = ModelConfig(family="sd3", path=a.pipeline, height=32, width=32, max_sequence_length=128)
    cfg.lora.rank, cfg.lora.alpha = 32, 64.0
    g = SD3Generator.load(cfg)
    prompts = ["a photo of a cat"] * 9

    def per_call(fn, n):
        fn()
        c = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - c) / n

    def toggle():
        with g.reference():
            pass

    out = {}
    for off in ("", "encode_cache", "adapter_toggle"):
        os.environ["GENALIGN_SPEED_OFF"] = off
        out[off or "on"] = {"encode": per_call(lambda: g.conditioning(prompts, 4.5), 20),
                            "toggle": per_call(toggle, 200)}
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------------ driver
def run_variant(name, trees, a, pipeline, tmp):
    tree_key, over, off = VARIANTS[name]
    tree = trees[tree_key]
    env = dict(os.environ, PYTHONPATH=tree, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), GENALIGN_SPEED_OFF=off)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--tree", tree, "--pipeline", pipeline,
           "--out", os.path.join(tmp, "runs", name), "--threads", str(a.threads), "--prompts", str(a.prompts),
           "--iterations", str(a.iterations), "--warmup", str(a.warmup), "--overrides", json.dumps(over)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise SystemExit(f"variant {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=BASE_COMMIT, help="git revision to compare against")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per iteration (× G 24 trajectories)")
    ap.add_argument("--iterations", type=int, default=2, help="timed iterations per variant and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every variant")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--no-micro", action="store_true", help="skip the per-call costs of the shortcuts")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return micro(a) if a.micro else worker(a)
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    sys.path.insert(0, REPO)
    from genalign.testing.tiny import build_tiny_sd3

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this": REPO}
        if any(VARIANTS[v][0] == "base" for v in names):
            base = os.path.join(tmp, "base")
            os.makedirs(base)
            sha = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.strip()
            arch = subprocess.run(["git", "archive", sha], cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", base], input=arch, check=True)
            trees["base"] = base
            print(f"base: {a.base} ({sha}) extracted to {base}")
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        print(f"this: {head}{' + uncommitted changes' if dirty else ''}; {a.threads} thread(s), "
              f"{a.prompts} prompts x 24 = {a.prompts * 24} trajectories per iteration, {a.iterations} timed "
              f"iteration(s) after {a.warmup} warm-up, {a.rounds} round(s)")
        pipeline = build_tiny_sd3(os.path.join(tmp, "tiny_sd3"))
        results = {v: [] for v in names}
        for r in range(a.rounds):
            for v in names:
                res = run_variant(v, trees, a, pipeline, tmp)
                results[v].extend(res["rows"])
                results[v + "/T5"] = res["max_sequence_length"]
                print(f"  round {r + 1} {v:>15}: " + " ".join(f"{row['seconds']:.2f}s cpu ({row['wall']:.2f}s wall)"
                                                               for row in res["rows"]), flush=True)
        mic = None
        if not a.no_micro:
            env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(a.threads))
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--micro", "--pipeline", pipeline,
                                "--threads", str(a.threads)], capture_output=True, text=True, env=env, cwd=REPO)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode != 0 or not line:
                raise SystemExit(f"micro benchmark failed:\n{r.stderr[-3000:]}")
            mic = json.loads(line[-1][len("RESULT "):])
    med = {v: {k: statistics.median(row[k] for row in results[v]) for k in ("seconds", "wall", "rollout", "reward",
                                                                         "update")} for v in names}
    if names:
        table(names, med, results)
    if mic is not None:
        n = a.prompts * 24
        calls_enc = -(-n // 9)  # rollout batches of 9
        calls_ref = 9 * calls_enc  # one reference forward per trained step (9) and micro-batch (9 samples)
        on = mic["on"]
        print(f"\nper-call costs (CPU ms, this tree) and what they add up to per iteration ({calls_enc} rollout "
              f"batches, {calls_ref} reference toggles):")
        for key, what, calls in (("encode_cache", "encode", calls_enc), ("adapter_toggle", "toggle", calls_ref)):
            o = mic[key][what]
            print(f"  {what:>6}: {on[what] * 1e3:7.3f} ms with the shortcut, {o * 1e3:7.3f} ms without "
                  f"-> {(o - on[what]) * calls:.3f} s per iteration")


def table(names, med, results):
    print(f"\nmedian CPU seconds per iteration (wall in brackets: it includes other jobs on a shared machine)")
    print(f"{'variant':>15} {'T5':>5} {'s/iter':>8} {'(wall)':>8} {'rollout':>8} {'reward':>8} {'update':>8}")
    for v in names:
        m = med[v]
        print(f"{v:>15} {str(results[v + '/T5']):>5} {m['seconds']:8.2f} {m['wall']:8.2f} {m['rollout']:8.2f} "
              f"{m['reward']:8.2f} {m['update']:8.2f}")
    if "base" in med and "this" in med:
        b, t = med["base"], med["this"]
        print(f"\nthis vs base: {b['seconds'] / t['seconds']:.2f}x faster per iteration (rollout "
              f"{b['rollout'] / t['rollout']:.2f}x, update {b['update'] / t['update']:.2f}x)")
    if "this" in med:
        print("contribution of each change (this with it undone / this; whole iterations, so noisy below ~5 %):")
        for v in names:
            if v in EXPLAIN:
                print(f"  {EXPLAIN[v]:<48} {med[v]['seconds'] / med['this']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
