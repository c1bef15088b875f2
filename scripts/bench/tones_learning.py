"""Tones-world learning tables: each recipe trains a fixed number of iterations from the shipped base, every saved
checkpoint is evaluated on held-out prompts x held-out seeds (offline, CPU, one thread).

    python scripts/bench/tones_learning.py --runs grpo=configs/toy/tones_grpo.yaml \\
        "grpo_nokl=configs/toy/tones_grpo.yaml|algorithm.beta=0" nft=configs/toy/tones_nft.yaml \\
        --iterations 30 --save-every 5

    # where an existing run's remaining errors sit, per prompt (base vs its checkpoint at or before iteration 250)
    python scripts/bench/tones_learning.py --skip-train --out runs/fe --runs nft_ref0.1=configs/toy/tones_nft.yaml \\
        --max-iteration 250 --ckpt-stride 100 --per-prompt

A run is NAME=RECIPE[|OVERRIDE[|OVERRIDE...]]. Metrics (eval prompts = every --stride-th of the recipe's
data.eval_prompts — assets/tones/prompts/eval.txt or eval_any_articulation.txt, never trained on; with
--prompts train, of its data.prompts instead, the prompts it trained on, still on unseen seeds; each run is
compared with the base sampled on the same prompt file; seeds 1000.. (--seeds of them), never seen in training or
in the base's selection; the recipe's deterministic evaluation sampler):
  correctness   tone_correctness (are the caption's notes the spectral peaks), mean
  FAD real      Fréchet distance of toy-CLAP (encoder `tones`) embeddings to the shipped real tones clips
  FAD stacc.    the same to the staccato exemplar subset (DRAGON's target)
  onset         onset_sharpness (exp(-attack/25 ms))
  stacc. cos    cosine of each clip's toy-CLAP audio embedding to the centroid of the text exemplars of
                configs/toy/tones_dragon_text.yaml (the "distance to the described attribute" is 1 - this)
  diversity     mean pairwise toy-CLAP embedding distance among the seeds of each prompt (collapse -> 0)
  win rate      per reward, the fraction of prompt x seed pairs where the fine-tuned clip scores above the base's
  CPU s         process CPU seconds of the training subprocess (the machine is shared: wall time is not a measure)
--artefacts DIR writes before/after WAVs, spectrogram grids and an index.html per run (genalign.media).
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

WIN_REWARDS = ("correctness", "onset", "clap", "stacc_cos")


def samples_of(gen, sampler, prompts, n_seeds, batch=48, stochastic=False):
    """Each prompt x seeds 1000.. with the recipe's evaluation sampler: deterministic, or with ``stochastic`` the
    training rollouts' stochastic steps (their window at its first start)."""
    P = [p for p in prompts for _ in range(n_seeds)]
    S = [1000 + i for _ in prompts for i in range(n_seeds)]
    with torch.no_grad():
        x = torch.cat([gen.rollout(P[a:a + batch], S[a:a + batch], sampler, num_steps=sampler.eval_num_steps,
                                   stochastic=stochastic, window_start=0 if stochastic else None).samples
                       for a in range(0, len(P), batch)])
    return x, P, S


class Metrics:
    def __init__(self):
        from genalign.config import load_config
        from genalign.registry import REWARDS
        from genalign.tones.assets import REAL, STACCATO, tones_asset

        self.fad_real = REWARDS.get("fd")(encoder="tones", reference=tones_asset(REAL))
        self.fad_st = REWARDS.get("fd")(encoder="tones", reference=tones_asset(STACCATO))
        text = load_config(os.path.join(REPO, "configs/toy/tones_dragon_text.yaml")).rewards[0].args["reference"]
        self.text_cos = REWARDS.get("centroid_similarity")(encoder="tones", reference=text, reference_kind="text")
        self.correct = REWARDS.get("tone_correctness")()
        self.onset = REWARDS.get("onset_sharpness")()
        self.clap = REWARDS.get("tones_clap_score")()

    def __call__(self, x, P, n_seeds):
        per = {"correctness": self.correct(x, P), "onset": self.onset(x, P), "clap": self.clap(x, P),
               "stacc_cos": self.text_cos(x, P)}
        e = self.fad_real.embed(x)
        div = [float(torch.pdist(e[i * n_seeds:(i + 1) * n_seeds]).mean()) for i in range(len(P) // n_seeds)]
        return {"per": per, "correctness": float(torch.nanmean(per["correctness"])), "onset": float(per["onset"].mean()),
                "stacc_cos": float(per["stacc_cos"].mean()), "fad_real": float(-self.fad_real.set_value(x)),
                "fad_staccato": float(-self.fad_st.set_value(x)), "diversity": sum(div) / len(div)}


def generator(cfg, ckpt):
    from genalign.registry import MODELS

    gen = MODELS.get(cfg.model.family).load(cfg.model)
    if ckpt is not None:
        gen.load_checkpoint(ckpt)
    return gen


def averaged(cfg, checkpoints):
    """A generator whose denoiser holds the uniform average of the checkpoints' denoiser weights (tail averaging):
    one generator, each checkpoint loaded into it in turn."""
    gen = generator(cfg, None)
    total = None
    for ck in checkpoints:
        gen.load_checkpoint(ck)
        sd = gen.denoiser.state_dict()
        if total is None:
            dtypes, total = {k: v.dtype for k, v in sd.items()}, {k: v.double().clone() for k, v in sd.items()}
        else:
            for k, v in sd.items():
                total[k] += v.double()
    gen.denoiser.load_state_dict({k: (v / len(checkpoints)).to(dtypes[k]) for k, v in total.items()})
    return gen


def write_artefacts(out_dir, tag, x, P, S, n_prompts, n_seeds, scores, sample_rate):
    from genalign.evaluation import write_evaluation

    write_evaluation(out_dir, tag, x, P, S, n_prompts, n_seeds, scores, "audio", sample_rate)


def factor_split(tag, x, P):
    """Where the deficit sits by factor of tone_correctness (explained · present, the mean over notes): the
    missing-note part mean(explained · (1 − present)) and the off-harmonic part mean(1 − explained), and per
    number of notes K the share of clips with every note present (present > 0.95)."""
    from genalign.tones.data import prompt_notes
    from genalign.tones.rewards import tone_correctness_factors

    notes = prompt_notes(P)
    f = tone_correctness_factors(x, notes)
    e, p = f[:, 0], f[:, 1]
    K = torch.tensor([len(n) for n in notes])
    every = ", ".join(f"K={k}: {float((p[K == k] > 0.95).float().mean()):.2f}" for k in sorted(set(K.tolist())))
    print(f"  {tag}: deficit from missing notes {float((e * (1 - p)).mean()):.3f}, off the notes' harmonics "
          f"{float((1 - e).mean()):.3f}; clips with every note, by K: {every}")


def per_prompt(name, iteration, prompts, base, after, n_seeds):
    """Each prompt's correctness per seed, base | run, and where the run's remaining deficit (1 − correctness) sits:
    in prompts whose seeds agree (sd < 0.05: a shared error, which a group-normalised advantage cannot see) or not."""
    b, a = base.view(len(prompts), n_seeds), after.view(len(prompts), n_seeds)
    print(f"\n{name} at iteration {iteration}, per prompt (seeds 1000..{999 + n_seeds}): base | run")
    for i, p in enumerate(prompts):
        print(f"  {p[:48]:48s} {' '.join(f'{v:.2f}' for v in b[i].tolist())} | "
              f"{' '.join(f'{v:.2f}' for v in a[i].tolist())}")
    deficit = (1 - a).clamp(min=0)
    shared = a.std(dim=1) < 0.05
    print(f"  deficit {float(deficit.mean()):.3f}, of which in prompts whose seeds agree within sd 0.05: "
          f"{float(deficit[shared].sum() / deficit.sum().clamp(min=1e-12)):.2f} ({int(shared.sum())} prompts)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=RECIPE[|OVERRIDE...]")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--stride", type=int, default=3, help="every n-th eval prompt")
    ap.add_argument("--prompts", choices=("eval", "train"), default="eval",
                    help="score on the recipe's held-out data.eval_prompts (default) or on its training "
                         "data.prompts (held-out seeds only: how far the level on trained prompts carries over)")
    ap.add_argument("--level", type=float, default=0.9, help="correctness level for trajectories-to-level")
    ap.add_argument("--out", default="runs/bench_tones")
    ap.add_argument("--artefacts", default=None, help="write before/after media here (4 prompts x 2 seeds)")
    ap.add_argument("--skip-train", action="store_true", help="evaluate existing run folders only")
    ap.add_argument("--ckpt-stride", type=int, default=1, help="evaluate every n-th checkpoint (and the last)")
    ap.add_argument("--max-iteration", type=int, default=None, help="ignore checkpoints after this iteration")
    ap.add_argument("--per-prompt", action="store_true",
                    help="print each eval prompt's per-seed correctness, base vs the last evaluated checkpoint")
    ap.add_argument("--ema", action="store_true",
                    help="evaluate each checkpoint's EMA weights (its ema/ folder; runs trained with train.ema.decay > 0)")
    ap.add_argument("--average-last", type=int, default=0, metavar="K",
                    help="also score the uniform average of the weights of the last K checkpoints (up to "
                         "--max-iteration), printed as a curve line of NAME~avgK; the table keeps the last checkpoint")
    ap.add_argument("--stochastic", action="store_true",
                    help="sample the base and the runs with the training rollouts' stochastic steps instead of the "
                         "deterministic evaluation sampler (the same seeds)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.trainer import list_checkpoints

    metrics = Metrics()
    bases, rows, curves = {}, [], []  # the base per eval prompt file (recipes may evaluate on different prompts)
    for spec in args.runs:
        name, rest = spec.split("=", 1)
        rec, *over = rest.split("|")
        out = os.path.join(args.out, name)
        cpu = float("nan")
        if not args.skip_train:
            cmd = [sys.executable, "-m", "genalign", "train", rec, f"run.output_dir={out}", "run.overwrite=true",
                   f"train.iterations={args.iterations}", "train.max_minutes=0", "train.eval_every=0",
                   f"train.save_every={args.save_every}", "train.keep_checkpoints=0", "run.progress=false",
                   "run.log_with=[none]", *over]
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode != 0:
                print(f"{name}: failed\n{r.stderr[-3000:]}", flush=True)
                continue
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            json.dump({"cpu_s": cpu, "cmd": cmd}, open(os.path.join(out, "bench_cpu.json"), "w"))
        elif os.path.exists(os.path.join(out, "bench_cpu.json")):
            cpu = json.load(open(os.path.join(out, "bench_cpu.json")))["cpu_s"]
        cfg = load_config(os.path.join(out, "config.yaml"))
        source = cfg.data.eval_prompts if args.prompts == "eval" else cfg.data.prompts
        prompts = read_prompts(source)[::args.stride]
        tag = os.path.splitext(os.path.basename(source))[0]
        if tag not in bases:
            x, P, S = samples_of(generator(cfg, None), cfg.sampler, prompts, args.seeds,
                               stochastic=args.stochastic)
            b = metrics(x, P, args.seeds)
            bases[tag] = (b, x, len(prompts))
            print(f"base ({tag}) corr {b['correctness']:.3f} FAD real {b['fad_real']:.3f} "
                  f"FAD st {b['fad_staccato']:.3f} div {b['diversity']:.3f}", flush=True)
        base, base_x, _ = bases[tag]
        curve = []
        cks = [c for c in list_checkpoints(out) if args.max_iteration is None
               or json.load(open(os.path.join(c, "trainer_state.json")))["iteration"] <= args.max_iteration]
        for ck in [c for i, c in enumerate(cks) if i % args.ckpt_stride == args.ckpt_stride - 1 or i == len(cks) - 1]:
            st = json.load(open(os.path.join(ck, "trainer_state.json")))
            weights = os.path.join(ck, "ema") if args.ema else ck
            if not os.path.isdir(weights):
                sys.exit(f"{ck} has no ema/ folder: --ema needs a run trained with train.ema.decay > 0")
            x, P, S = samples_of(generator(cfg, weights), cfg.sampler, prompts, args.seeds,
                               stochastic=args.stochastic)
            m = metrics(x, P, args.seeds)
            curve.append((st["iteration"], st["counters"]["trajectories"], m))
            print(f"{name} it {st['iteration']} traj {st['counters']['trajectories']} corr {m['correctness']:.3f} "
                  f"FAD real {m['fad_real']:.3f} FAD st {m['fad_staccato']:.3f} "
                  f"({100 * (m['fad_staccato'] / base['fad_staccato'] - 1):+.1f} %) div {m['diversity']:.3f}",
                  flush=True)
        if not curve:
            continue
        if args.average_last > 1 and len(cks) >= args.average_last:
            x_avg = samples_of(averaged(cfg, cks[-args.average_last:]), cfg.sampler, prompts, args.seeds,
                               stochastic=args.stochastic)[0]
            m = metrics(x_avg, P, args.seeds)
            print(f"{name}~avg{args.average_last} it {curve[-1][0]} corr {m['correctness']:.3f} "
                  f"FAD real {m['fad_real']:.3f} FAD st {m['fad_staccato']:.3f} div {m['diversity']:.3f}", flush=True)
        after = curve[-1][2]
        if args.per_prompt:
            per_prompt(name, curve[-1][0], prompts, base["per"]["correctness"], after["per"]["correctness"], args.seeds)
            factor_split("base", base_x, P)
            factor_split(name, x, P)
        wins = {k: float((after["per"][k] > base["per"][k]).float().mean()) for k in WIN_REWARDS}
        reach = next((traj for _, traj, m in curve if m["correctness"] >= args.level), None)
        rows.append((name, after, wins, curve[-1][1], cpu, reach, tag))
        curves.append((name, curve))
        if args.artefacts:
            n_p, n_s = 4, 2
            pick = [i * args.seeds + s for i in range(0, len(prompts), max(1, len(prompts) // n_p))[:n_p]
                    for s in range(n_s)]
            Pp, Sp = [P[i] for i in pick], [S[i] for i in pick]
            sr = cfg.model.sample_rate
            btag = "base" if tag == "eval" else f"base_{tag}"
            if not os.path.exists(os.path.join(args.artefacts, btag)):
                write_artefacts(os.path.join(args.artefacts, btag), btag, base_x[pick], Pp, Sp, n_p, n_s,
                                {k: base["per"][k][pick] for k in WIN_REWARDS}, sr)
            write_artefacts(os.path.join(args.artefacts, name), name, x[pick], Pp, Sp, n_p, n_s,
                            {k: after["per"][k][pick] for k in WIN_REWARDS}, sr)
    if not bases:
        return
    which = "held-out prompts" if args.prompts == "eval" else "trained prompts"
    print(f"\n{which}, every {args.stride}. ({', '.join(f'{t}: {b[2]}' for t, b in bases.items())}) x held-out seeds "
          f"1000..{999 + args.seeds}; CPU, 1 thread; last checkpoint; each run against the base on its prompts")
    print("| run | correctness | FAD real | FAD staccato | onset | stacc. cos | diversity | trajectories | "
          f"traj. to {args.level} | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tag, (b, _, _) in bases.items():
        print(f"| base ({tag}) | {b['correctness']:.3f} | {b['fad_real']:.2f} | {b['fad_staccato']:.2f} | "
              f"{b['onset']:.3f} | {b['stacc_cos']:.3f} | {b['diversity']:.3f} | 0 | – | – |")
    for name, a, w, traj, cpu, reach, _ in rows:
        print(f"| {name} | {a['correctness']:.3f} | {a['fad_real']:.2f} | {a['fad_staccato']:.2f} | {a['onset']:.3f} | "
              f"{a['stacc_cos']:.3f} | {a['diversity']:.3f} | {traj} | {reach if reach is not None else '–'} | "
              f"{cpu:.0f} |")
    print("\nwin rate vs base (fraction of prompt x seed pairs where the run's clip scores higher)")
    print("| run | " + " | ".join(WIN_REWARDS) + " |")
    print("|---|" + "---|" * len(WIN_REWARDS))
    for name, a, w, *_ in rows:
        print(f"| {name} | " + " | ".join(f"{w[k]:.2f}" for k in WIN_REWARDS) + " |")
    print("\ncurves (iteration: trajectories, correctness, FAD real, FAD staccato)")
    for name, curve in curves:
        print(f"{name}: " + "; ".join(f"{it}: {traj}, {m['correctness']:.3f}, {m['fad_real']:.2f}, "
                                      f"{m['fad_staccato']:.2f}" for it, traj, m in curve))


if __name__ == "__main__":
    main()
