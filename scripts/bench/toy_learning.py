"""Toy-world comparison of objectives under the same budget and seeds (offline, CPU).

    # train each recipe for the same wall-clock budget, then evaluate base vs final on held-out seeds
    python scripts/bench/toy_learning.py --recipes configs/toy/flow_grpo.yaml configs/toy/nft.yaml --minutes 5

    # evaluate existing runs at minute marks (e.g. the KL vs no-KL reward-hacking study)
    python scripts/bench/toy_learning.py --runs runs/flow_kl runs/flow_nokl --at 0 5 10

Metrics (all on the eval prompts × held-out seeds 1000.. (32 by default), deterministic sampler of the recipe):
  correctness  mean p(prompted digit) under the shipped classifier (digit_correctness)
  FD           Fréchet distance of classifier features to the 360 real held-out digits (lower = closer to data)
  diversity    mean pairwise feature distance among the seeds of each prompt (collapse -> 0), and Vendi
  trajectories rollouts used for training up to that point; CPU s = process CPU seconds of training
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


EXEMPLAR = None  # --exemplar: an embeddings file; adds the FD to that exemplar set (DRAGON)
EXTRA_REWARDS = []  # --rewards: further reward names whose means are reported (e.g. ink centredness for MARBLE)


def held_out_samples(gen, sampler, prompts, n_seeds, batch=40, first_seed=1000):
    """Deterministic samples of every prompt at held-out seeds 1000.. (``first_seed``..: another split, e.g. a
    validation one), prompt-major: (images, prompt per image)."""
    P = [p for p in prompts for _ in range(n_seeds)]
    S = [first_seed + i for _ in prompts for i in range(n_seeds)]
    with torch.no_grad():
        x = torch.cat([gen.rollout(P[a : a + batch], S[a : a + batch], sampler, num_steps=sampler.eval_num_steps,
                                   stochastic=False).samples for a in range(0, len(P), batch)])
    return x, P


def evaluate(run_cfg, ckpt, n_seeds=8, device="cpu", first_seed=1000):
    """Correctness, FD to real digits and diversity of a checkpoint (None = the base model), at sample seeds
    ``first_seed``.. (1000..: the held-out protocol)."""
    from genalign.io import read_prompts
    from genalign.registry import MODELS
    from genalign.rewards.base import build_reward
    from genalign.toy.metrics import digit_features, fd_to_real, mean_pairwise_distance, vendi_score

    mcfg = run_cfg.model
    gen = MODELS.get(mcfg.family).load(mcfg, device=device)
    if ckpt is not None:
        gen.load_checkpoint(ckpt)
    prompts = read_prompts(run_cfg.data.eval_prompts or run_cfg.data.prompts)
    x, P = held_out_samples(gen, run_cfg.sampler, prompts, n_seeds, first_seed=first_seed)
    corr = float(build_reward("digit_correctness")(x, P).mean())
    feats = digit_features(x)
    div = [mean_pairwise_distance(feats[i * n_seeds : (i + 1) * n_seeds]) for i in range(len(prompts))]
    vend = [vendi_score(feats[i * n_seeds : (i + 1) * n_seeds]) for i in range(len(prompts))]
    out = {"correctness": corr, "fd": float(fd_to_real(x)), "diversity": sum(div) / len(div),
           "vendi": sum(vend) / len(vend)}
    for name in EXTRA_REWARDS:
        out[name] = float(build_reward(name)(x, P).mean())
    if EXEMPLAR:
        from safetensors.torch import load_file

        from genalign.toy.data import THICK_INK, ink
        from genalign.toy.metrics import feature_fd

        out["fd_exemplar"] = float(feature_fd(feats, load_file(EXEMPLAR)["embeddings"]))
        out["thick_share"] = float((ink(x) > THICK_INK).float().mean())
    return out


def checkpoints_with_time(run_dir):
    from genalign.trainer import list_checkpoints

    out = []
    for ck in list_checkpoints(run_dir):
        st = json.load(open(os.path.join(ck, "trainer_state.json")))
        out.append((st["elapsed"] / 60, st["counters"]["trajectories"], ck))
    return out


def eval_runs(runs, marks, n_seeds):
    from genalign.config import load_config

    extra = " FD to exemplars | thick share |" if EXEMPLAR else ""
    extra += "".join(f" {n} |" for n in EXTRA_REWARDS)
    print(f"| run | minute | ckpt | trajectories | correctness | FD to real | diversity | Vendi |{extra}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if EXEMPLAR else "") + "---|" * len(EXTRA_REWARDS))
    for run in runs:
        cfg = load_config(os.path.join(run, "config.yaml"))
        cks = checkpoints_with_time(run)
        for m in marks:
            if m == 0:
                row, ck, traj, at = evaluate(cfg, None, n_seeds), "base", 0, 0.0
            else:
                cand = [c for c in cks if c[0] <= m + 0.25]
                if not cand:
                    continue
                at, traj, ck = cand[-1]
                row = evaluate(cfg, ck, n_seeds)
                ck = os.path.basename(ck)
            ex = f" {row['fd_exemplar']:.1f} | {row['thick_share']:.2f} |" if EXEMPLAR else ""
            ex += "".join(f" {row[n]:.3f} |" for n in EXTRA_REWARDS)
            print(f"| {os.path.basename(run)} | {at:.1f} | {ck} | {traj} | {row['correctness']:.3f} | {row['fd']:.1f} | "
                  f"{row['diversity']:.2f} | {row['vendi']:.2f} |{ex}", flush=True)


def run_recipes(recipes, minutes, out_root, n_seeds, extra):
    from genalign.config import load_config
    from genalign.trainer import latest_checkpoint

    rows = []
    for rec in recipes:
        name = os.path.splitext(os.path.basename(rec))[0]
        out = os.path.join(out_root, name)
        cmd = [sys.executable, "-m", "genalign", "train", rec, f"run.output_dir={out}", "run.overwrite=true",
               f"train.max_minutes={minutes}", "train.iterations=100000", "train.eval_every=0", "train.save_every=0",
               "run.progress=false", "run.log_with=[none]", *extra]
        t0 = time.time()
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if r.returncode != 0:
            print(f"{name}: failed\n{r.stderr[-2000:]}")
            continue
        wall = time.time() - t0
        summary = json.load(open(os.path.join(out, "summary.json")))
        cfg = load_config(os.path.join(out, "config.yaml"))
        before = evaluate(cfg, None, n_seeds)
        after = evaluate(cfg, latest_checkpoint(out), n_seeds)
        rows.append((name, before, after, summary["trajectories"], summary["seconds"], wall))
    print(f"\nbudget {minutes} min per objective (train.max_minutes), held-out seeds 1000..{1000 + n_seeds - 1}, "
          f"device CPU ({torch.get_num_threads()} threads)")
    print("| objective | correctness before → after | FD before → after | diversity before → after | trajectories | train s |")
    print("|---|---|---|---|---|---|")
    for name, b, a, traj, secs, _ in rows:
        print(f"| {name} | {b['correctness']:.3f} → {a['correctness']:.3f} | {b['fd']:.1f} → {a['fd']:.1f} | "
              f"{b['diversity']:.2f} → {a['diversity']:.2f} | {traj} | {secs:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="*", default=[])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--at", type=float, nargs="*", default=[0, 5, 10])
    ap.add_argument("--seeds", type=int, default=32, help="held-out seeds per eval prompt")
    ap.add_argument("--out", default="runs/bench_toy")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every recipe")
    ap.add_argument("--exemplar", help="embeddings .safetensors: also report the FD to this exemplar set")
    ap.add_argument("--rewards", nargs="*", default=[], help="also report these rewards' means (e.g. ink centredness)")
    args = ap.parse_args()
    global EXEMPLAR, EXTRA_REWARDS
    EXEMPLAR = args.exemplar
    EXTRA_REWARDS = list(args.rewards)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from genalign.cli import quiet_libraries

    quiet_libraries()
    if args.runs:
        eval_runs(args.runs, args.at, args.seeds)
    if args.recipes:
        run_recipes(args.recipes, args.minutes, args.out, args.seeds, args.set)


if __name__ == "__main__":
    main()
