"""Few-step distillation on the digits toy world, measured with the held-out protocol of toy_learning.py (the eval
prompts × held-out seeds 1000.., correctness, FD to real digits, per-prompt diversity).

    # the teacher at 40 / 4 / 1 steps with CFG 3 (flow; --family sd for the ε pipeline)
    python scripts/bench/distill_toy.py --teacher
    # train a recipe for a wall budget, then evaluate every checkpoint; prints the run's CPU seconds (process time
    # of the training process, children included: the CPU is shared, wall time is not a budget)
    python scripts/bench/distill_toy.py --recipe configs/toy/dmd2.yaml --minutes 10 --name dmd2_1step
    python scripts/bench/distill_toy.py --recipe configs/toy/dmd2.yaml --minutes 10 --name no_ttur \
        --set algorithm.fake_updates_per_generator=1
    # the ablations (same iterations and seeds; each run's fake-score loss per 50 iterations is printed)
    python scripts/bench/distill_toy.py --recipe configs/toy/dmd2.yaml --iterations 500 --name full \
        --set algorithm.gan=true data.real=toy:digits algorithm.regression_weight=0.25
    # evaluate the checkpoints of existing runs; --ema adds rows for the student's EMA (a run with train.ema.decay)
    python scripts/bench/distill_toy.py --runs runs/toy_dmd2 --ema
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts", "bench"))

TEACHERS = {"sd3": "assets/toy/digits_flow", "sd": "assets/toy/digits_eps"}


def stochastic_samples(gen, sampler, prompts, n_seeds, batch=40, first_seed=1000):
    """Like toy_learning.held_out_samples, with the stochastic kernel of ``sampler`` (e.g. RTDMD's CPS η 0.9): each
    held-out seed also fixes its per-step noise, so the samples are reproducible."""
    P = [p for p in prompts for _ in range(n_seeds)]
    S = [first_seed + i for _ in prompts for i in range(n_seeds)]
    with torch.no_grad():
        x = torch.cat([gen.rollout(P[a:a + batch], S[a:a + batch], sampler, num_steps=sampler.eval_num_steps,
                                   stochastic=True).samples for a in range(0, len(P), batch)])
    return x, P


def metrics(gen, sampler, prompts, n_seeds, stochastic=False, first_seed=1000):
    from toy_learning import held_out_samples

    from genalign.rewards.base import build_reward
    from genalign.toy.metrics import digit_features, fd_to_real, mean_pairwise_distance

    x, P = (stochastic_samples if stochastic else held_out_samples)(gen, sampler, prompts, n_seeds,
                                                                    first_seed=first_seed)
    feats = digit_features(x)
    div = [mean_pairwise_distance(feats[i * n_seeds:(i + 1) * n_seeds]) for i in range(len(prompts))]
    return {"correctness": float(build_reward("digit_correctness")(x, P).mean()), "fd": float(fd_to_real(x)),
            "diversity": sum(div) / len(div)}


def row(name, m, extra=""):
    print(f"| {name} | {m['correctness']:.3f} | {m['fd']:.1f} | {m['diversity']:.2f} |{extra}", flush=True)


def teacher_rows(family, n_seeds, steps=(40, 4, 1), guidance=3.0):
    from genalign.config import ModelConfig, SamplerConfig
    from genalign.io import read_prompts
    from genalign.registry import MODELS

    cls = MODELS.get(family)
    mcfg = ModelConfig(family=family, path=os.path.join(REPO, TEACHERS[family]), height=16, width=16,
                       max_sequence_length=8 if family == "sd3" else None)
    mcfg.lora.rank = 0
    gen = cls.load(mcfg)
    prompts = read_prompts(os.path.join(REPO, "assets/toy/prompts/eval.txt"))
    print(f"teacher {TEACHERS[family]}, CFG {guidance}, held-out seeds 1000..{1000 + n_seeds - 1}")
    print("| sampler | correctness | FD to real | diversity |\n|---|---|---|---|")
    for few_step in (False, True) if family == "sd" else (False,):
        if few_step:
            gen.prepare_few_step()  # the students' trailing DDIM timesteps
        for k in steps:
            s = SamplerConfig(num_steps=k, eval_num_steps=k, guidance_scale=guidance, kernel=gen.law.default_kernel
                              if family == "sd" else "ode")
            row(f"teacher {k} steps{' (trailing)' if few_step else ''}", metrics(gen, s, prompts, n_seeds))


def student_steps(cfg):
    """The step count ``prepare_few_step`` gets for the run's student (its few_step_sigmas setting)."""
    from genalign.algorithms.dmd2 import student_schedule_steps
    from genalign.registry import ALGORITHMS

    cls = ALGORITHMS.get(cfg.algorithm.name)
    sigmas = cfg.algorithm.args.get("few_step_sigmas", getattr(cls, "few_step_sigmas", "stock"))
    return student_schedule_steps(sigmas, cfg.sampler.num_steps)


def load_ema(gen, ck):
    """The checkpoint's EMA of the student (``train.ema.decay`` > 0) into ``gen``, which holds its live weights (the
    shadow tensors of a full fine-tune, e.g. the toy students, or the ``ema/`` LoRA folder)."""
    from genalign.algorithms.rtdmd_stage2 import load_student_ema

    load_student_ema(gen, ck)


def student_rows(run, n_seeds, label=None, cps=None, first_seeds=(1000,), ema=False):
    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.registry import MODELS
    from genalign.trainer import list_checkpoints

    cfg = load_config(os.path.join(run, "config.yaml"))
    prompts = read_prompts(cfg.data.eval_prompts)
    for ck in list_checkpoints(run):
        st = json.load(open(os.path.join(ck, "trainer_state.json")))
        gen = MODELS.get(cfg.model.family).load(cfg.model)
        gen.prepare_few_step(student_steps(cfg))
        gen.load_checkpoint(ck)
        if ema:
            load_ema(gen, ck)
        sampler = cfg.sampler
        if cps is not None:  # RTDMD's own sampler: CPS with η = cps on every step but the (deterministic) last
            sampler = dataclasses.replace(cfg.sampler, kernel="cps", noise_level=cps)
        steps = st.get("part_steps", {})
        for fs in first_seeds:  # one row per seed split (e.g. validation 2000.., held-out 1000..)
            m = metrics(gen, sampler, prompts, n_seeds, stochastic=cps is not None, first_seed=fs)
            split = "" if tuple(first_seeds) == (1000,) else f" seeds {fs}.."
            row(f"{label or os.path.basename(run)} {os.path.basename(ck)}{' EMA' if ema else ''}{split}", m,
                f" {st['elapsed'] / 60:.1f} | {steps.get('policy', '?')} / {steps.get('fake_score', '?')} |")


def fake_trace(run, every=50, key="fake_score/fake_loss"):
    """The mean fake-score loss per ``every`` iterations of a run (from its metrics.jsonl)."""
    vals = [json.loads(line).get(key) for line in open(os.path.join(run, "metrics.jsonl"))]
    vals = [v for v in vals if v is not None and v == v]
    means = [sum(vals[a:a + every]) / len(vals[a:a + every]) for a in range(0, len(vals), every)]
    print(f"{os.path.basename(run)}: mean {key} per {every} iterations: " + " ".join(f"{m:.4f}" for m in means))


def train(recipe, minutes, out, extra, iterations=None):
    budget = [f"train.iterations={iterations}"] if iterations else [f"train.max_minutes={minutes}",
                                                                   "train.iterations=100000"]
    cmd = [sys.executable, "-m", "genalign", "train", recipe, f"run.output_dir={out}", "run.overwrite=true",
           *budget, "train.eval_every=0", "run.progress=false", "run.log_with=[none]", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"training failed:\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", action="store_true")
    ap.add_argument("--family", default="sd3", choices=sorted(TEACHERS))
    ap.add_argument("--recipe")
    ap.add_argument("--name", default=None)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall budget of the training run")
    ap.add_argument("--iterations", type=int, default=None, help="iteration budget instead of --minutes")
    ap.add_argument("--trace", type=int, default=50, help="print the fake-score loss per N iterations (0 = off)")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of the recipe")
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--cps", type=float, default=None, help="also sample the students with CPS at this η (RTDMD's "
                    "sampler, 0.9), seeded by the held-out seeds")
    ap.add_argument("--first-seed", type=int, nargs="+", default=[1000], help="evaluate the students at seeds "
                    "FIRST.. of each split given (1000: the held-out protocol; e.g. 2000 1000 for a validation split "
                    "to pick a checkpoint on, then the held-out one to report it on)")
    ap.add_argument("--ema", action="store_true", help="also evaluate each checkpoint's EMA of the student (a run "
                    "trained with train.ema.decay > 0; the trainer's own evaluation uses the EMA too)")
    ap.add_argument("--out", default="runs/bench_distill")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from genalign.cli import quiet_libraries

    quiet_libraries()
    if args.teacher:
        teacher_rows(args.family, args.seeds)
    runs = list(args.runs)
    if args.recipe:
        name = args.name or os.path.splitext(os.path.basename(args.recipe))[0]
        out = os.path.join(args.out, name)
        cpu, wall = train(args.recipe, args.minutes, out, args.set, args.iterations)
        print(f"{name}: trained {wall / 60:.1f} wall-min, {cpu:.0f} CPU-s (process time) {' '.join(args.set)}")
        runs.append(out)
    if runs:
        print("| student | correctness | FD to real | diversity | wall min | generator / fake-score steps |")
        print("|---|---|---|---|---|---|")
        for run in runs:
            label = args.name if args.recipe and run == runs[-1] else None
            student_rows(run, args.seeds, label, first_seeds=args.first_seed)
            if args.ema:
                student_rows(run, args.seeds, label, first_seeds=args.first_seed, ema=True)
            if args.cps is not None:
                student_rows(run, args.seeds, f"{os.path.basename(run)} CPS η {args.cps}", cps=args.cps,
                             first_seeds=args.first_seed)
        if args.trace:
            for run in runs:
                fake_trace(run, args.trace)


if __name__ == "__main__":
    main()
