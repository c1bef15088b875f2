"""Tones-world comparison of objectives under the same budget and held-out seeds (offline, CPU).

    python scripts/bench/tones_learning.py --recipes configs/toy/tones_grpo.yaml configs/toy/tones_nft.yaml --minutes 5
    python scripts/bench/tones_learning.py --recipes configs/toy/tones_grpo.yaml --minutes 5 --extra algorithm.beta=0

Metrics (eval prompts (every --stride-th of assets/tones/prompts/eval.txt) x held-out seeds 1000.., the recipe's
deterministic evaluation sampler):
  correctness   tone_correctness (are the caption's notes the spectral peaks), mean
  FAD real      Fréchet distance of toy-CLAP (encoder `tones`) embeddings to the shipped real tones clips
  FAD stacc.    the same to the staccato exemplar subset (DRAGON's target)
  onset         onset_sharpness (exp(-attack/25 ms))
  diversity     mean pairwise toy-CLAP embedding distance among the seeds of each prompt (collapse -> 0)
  win rate      per reward, the fraction of prompt x seed pairs where the fine-tuned clip scores above the base's
  CPU s         process CPU seconds of the training subprocess (the machine is shared: wall time is not a measure)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def samples_of(gen, sampler, prompts, n_seeds, batch=32):
    P = [p for p in prompts for _ in range(n_seeds)]
    S = [1000 + i for _ in prompts for i in range(n_seeds)]
    with torch.no_grad():
        x = torch.cat([gen.rollout(P[a:a + batch], S[a:a + batch], sampler, num_steps=sampler.eval_num_steps,
                                   stochastic=False).samples for a in range(0, len(P), batch)])
    return x, P


def evaluate(cfg, ckpt, prompts, n_seeds):
    from genalign.registry import MODELS, REWARDS
    from genalign.tones.assets import REAL, STACCATO, tones_asset

    gen = MODELS.get(cfg.model.family).load(cfg.model)
    if ckpt is not None:
        gen.load_checkpoint(ckpt)
    x, P = samples_of(gen, cfg.sampler, prompts, n_seeds)
    per = {"correctness": REWARDS.get("tone_correctness")()(x, P), "onset": REWARDS.get("onset_sharpness")()(x, P)}
    fad_real = REWARDS.get("fd")(encoder="tones", reference=tones_asset(REAL))
    fad_st = REWARDS.get("fd")(encoder="tones", reference=tones_asset(STACCATO))
    e = fad_real.embed(x)
    div = [float(torch.pdist(e[i * n_seeds:(i + 1) * n_seeds]).mean()) for i in range(len(prompts))]
    return {"per": per, "correctness": float(torch.nanmean(per["correctness"])), "onset": float(per["onset"].mean()),
            "fad_real": float(-fad_real.set_value(x)), "fad_staccato": float(-fad_st.set_value(x)),
            "diversity": sum(div) / len(div)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--stride", type=int, default=3, help="every n-th eval prompt")
    ap.add_argument("--out", default="runs/bench_tones")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every recipe")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.trainer import latest_checkpoint

    rows, base = [], None
    for rec in args.recipes:
        name = os.path.splitext(os.path.basename(rec))[0] + ("+" + "+".join(args.extra) if args.extra else "")
        out = os.path.join(args.out, name.replace("=", "").replace("/", "_"))
        cmd = [sys.executable, "-m", "genalign", "train", rec, f"run.output_dir={out}", "run.overwrite=true",
               f"train.max_minutes={args.minutes}", "train.iterations=100000", "train.eval_every=0",
               "train.save_every=0", "run.progress=false", "run.log_with=[none]", *args.extra]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            print(f"{name}: failed\n{r.stderr[-2000:]}")
            continue
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        summary = json.load(open(os.path.join(out, "summary.json")))
        cfg = load_config(os.path.join(out, "config.yaml"))
        prompts = read_prompts(cfg.data.eval_prompts)[::args.stride]
        if base is None:
            base = evaluate(cfg, None, prompts, args.seeds)
        after = evaluate(cfg, latest_checkpoint(out), prompts, args.seeds)
        wins = {k: float((after["per"][k] > base["per"][k]).float().mean()) for k in base["per"]}
        rows.append((name, after, wins, summary["trajectories"], cpu))
    if base is None:
        return
    print(f"\nbudget {args.minutes} min wall per objective; {len(prompts)} held-out prompts x seeds 1000.."
          f"{999 + args.seeds}; CPU, 1 thread")
    print("| objective | correctness | FAD real | FAD staccato | onset | diversity | win corr. | win onset | "
          "trajectories | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| base | {base['correctness']:.3f} | {base['fad_real']:.2f} | {base['fad_staccato']:.2f} | "
          f"{base['onset']:.3f} | {base['diversity']:.3f} | – | – | 0 | – |")
    for name, a, w, traj, cpu in rows:
        print(f"| {name} | {a['correctness']:.3f} | {a['fad_real']:.2f} | {a['fad_staccato']:.2f} | {a['onset']:.3f} | "
              f"{a['diversity']:.3f} | {w['correctness']:.2f} | {w['onset']:.2f} | {traj} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
