"""Adv-GRPO on the toy world (issue 15), on the held-out protocol of scripts/bench/toy_learning.py.

    # train a recipe for a fixed number of iterations (same seeds for every recipe), CPU seconds recorded
    python scripts/bench/adv_grpo_toy.py train configs/toy/adv_grpo.yaml --out runs/bench_adv/adv [key=value ...]
    # (eval_every is left to the overrides: the protocol's evaluation is the held-out one below)
    # base vs checkpoints: correctness, FD to the thick references, FD to real digits, thick share, ink, diversity
    python scripts/bench/adv_grpo_toy.py eval runs/bench_adv/adv runs/bench_adv/ink --at 100 200
    # held-out grid (eval prompts × the first 8 held-out seeds) of a checkpoint ('base' for the base model)
    python scripts/bench/adv_grpo_toy.py grid runs/bench_adv/adv checkpoint-200 out.png
    # several training seeds: train PREFIX_s0, PREFIX_s1, ... then report every run and mean ± spread per group
    python scripts/bench/adv_grpo_toy.py train configs/toy/adv_grpo_only.yaml --out runs/b/proj --seeds 0 1 2
    python scripts/bench/adv_grpo_toy.py seeds runs/b/proj runs/b/other --at 25 50 75 --split val
    # validation early stop: per run the checkpoint picked on val, then reported on held-out
    python scripts/bench/adv_grpo_toy.py earlystop runs/b/proj --margin 0.03

Splits of the sample seeds (the training prompts are the eval prompts, so the splits are over noise seeds):
``heldout`` = 1000.. (32 per prompt, the protocol, for reporting only), ``val`` = 2000.. (32 per prompt, for
choosing settings and checkpoints). ``seeds`` caches each evaluation as RUN/bench_eval/<checkpoint>_<split>.json.

The references are the thick-stroke held-out digits (assets/toy/exemplars/thick_digits*, the adversarial reward's
positives); "FD to refs" is toy_learning's FD to that exemplar set, "FD to real" its FD to the 360 real held-out
digits. Held-out seeds 1000.. (32 per prompt by default), deterministic sampler of the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toy_learning  # noqa: E402  (the held-out protocol)

REPO = toy_learning.REPO
EXEMPLAR = os.path.join(REPO, "assets/toy/exemplars/thick_digits.safetensors")


def train(cfg_path, out, overrides):
    cmd = [sys.executable, "-m", "genalign", "train", cfg_path, f"run.output_dir={out}", "run.overwrite=true",
           "run.progress=false", "run.log_with=[none]", "train.max_minutes=0", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"training failed:\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rec = {"command": " ".join(cmd), "cpu_seconds": cpu, "wall_seconds": time.time() - t0}
    with open(os.path.join(out, "bench_cpu.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps(rec))


SPLITS = {"heldout": 1000, "val": 2000}


def _cached_eval(cfg, run, ck, n_seeds, split, cache_root):
    """toy_learning.evaluate of checkpoint ``ck`` (None = base) at the split's seeds, cached as JSON."""
    name = os.path.basename(ck) if ck else "base"
    path = os.path.join(cache_root, "bench_eval", f"{name}_{split}_{n_seeds}.json")
    if os.path.exists(path):
        return json.load(open(path))
    toy_learning.EXEMPLAR = EXEMPLAR
    toy_learning.EXTRA_REWARDS = ["ink"]
    m = toy_learning.evaluate(cfg, ck, n_seeds, first_seed=SPLITS[split])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(m, f, indent=1)
    return m


def _spread(vals):
    """'mean ± sd [min, max]' (sd with n − 1)."""
    t = torch.tensor(vals, dtype=torch.float64)
    sd = float(t.std()) if len(vals) > 1 else 0.0
    return float(t.mean()), sd, float(t.min()), float(t.max())


def seed_groups(prefixes, at, n_seeds, split):
    """Every run PREFIX_s<k> of every group at the checkpoints ``at``: correctness (Δ to the base), FD to refs (%
    change), FD to real (× base), thick share; then per group and checkpoint the mean ± sd [min, max] over seeds,
    and how many seeds meet issue 15's first clause (Δ correctness ≥ −0.05 and FD to refs ≤ −40 %)."""
    import glob

    from genalign.config import load_config
    from genalign.trainer import list_checkpoints

    base = None
    print(f"split {split}: sample seeds {SPLITS[split]}..{SPLITS[split] + n_seeds - 1} per prompt")
    print("| group | training seed | checkpoint | correctness (Δ base) | FD to refs (Δ %) | FD to real (× base) | "
          "thick share | clause 1 |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for prefix in prefixes:
        runs = [r for r in glob.glob(f"{prefix}_s[0-9]*") if os.path.isdir(r) and r.rsplit("_s", 1)[1].isdigit()]
        runs.sort(key=lambda r: int(r.rsplit("_s", 1)[1]))
        if not runs:
            sys.exit(f"no runs {prefix}_s<k>")
        per_ck = {}
        for run in runs:
            cfg = load_config(os.path.join(run, "config.yaml"))
            if base is None:
                base = _cached_eval(cfg, None, None, n_seeds, split, os.path.dirname(os.path.abspath(run)))
                print(f"| base | | | {base['correctness']:.3f} | {base['fd_exemplar']:.1f} | {base['fd']:.1f} | "
                      f"{base['thick_share']:.2f} | |")
            for ck in list_checkpoints(run):
                it = int(ck.rsplit("-", 1)[1])
                if at and it not in at:
                    continue
                m = _cached_eval(cfg, run, ck, n_seeds, split, run)
                dc = m["correctness"] - base["correctness"]
                dfd = 100 * (m["fd_exemplar"] / base["fd_exemplar"] - 1)
                ok = dc >= -0.05 and dfd <= -40
                per_ck.setdefault(it, []).append((m["correctness"], dc, dfd, m["fd"] / base["fd"], m["thick_share"], ok))
                print(f"| {os.path.basename(prefix)} | {run.rsplit('_s', 1)[1]} | {it} | {m['correctness']:.3f} "
                      f"({dc:+.3f}) | {m['fd_exemplar']:.1f} ({dfd:+.0f} %) | {m['fd']:.1f} "
                      f"({m['fd'] / base['fd']:.2f}×) | {m['thick_share']:.2f} | {'yes' if ok else 'no'} |", flush=True)
        for it, rows in sorted(per_ck.items()):
            summary.append((os.path.basename(prefix), it, rows))
    print(f"\nmean ± sd [min, max] over training seeds ({split} split)")
    print("| group | checkpoint | seeds | correctness | Δ correctness | FD to refs Δ % | FD to real × base | "
          "thick share | seeds meeting clause 1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, it, rows in summary:
        cols = [_spread([r[j] for r in rows]) for j in range(5)]
        fmt = ["{:.3f} ± {:.3f} [{:.3f}, {:.3f}]", "{:+.3f} ± {:.3f} [{:+.3f}, {:+.3f}]", "{:+.0f} ± {:.0f} [{:+.0f}, {:+.0f}]",
               "{:.2f} ± {:.2f} [{:.2f}, {:.2f}]", "{:.2f} ± {:.2f} [{:.2f}, {:.2f}]"]
        print(f"| {name} | {it} | {len(rows)} | " + " | ".join(f.format(*c) for f, c in zip(fmt, cols))
              + f" | {sum(r[5] for r in rows)}/{len(rows)} |")


def early_stop(prefixes, n_seeds, margin):
    """Validation early stop, per run: of every checkpoint of PREFIX_s<k>, evaluated on the ``val`` split, keep
    those with Δ correctness ≥ −``margin`` (to the base on val) and pick the lowest FD to refs; only that checkpoint
    is then evaluated on the held-out split. Prints the picks and, per group, mean ± sd [min, max] on held-out."""
    import glob

    from genalign.config import load_config
    from genalign.trainer import list_checkpoints

    print(f"rule: per run, lowest val FD to refs among checkpoints with val Δ correctness ≥ −{margin}; "
          f"reported on held-out (sample seeds 1000..{1000 + n_seeds - 1})")
    print("| group | training seed | picked (val) | val correctness Δ | val FD to refs Δ % | held-out correctness (Δ) | "
          "held-out FD to refs (Δ %) | held-out FD to real (× base) | thick share | clause 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups = []
    for prefix in prefixes:
        runs = [r for r in glob.glob(f"{prefix}_s[0-9]*") if os.path.isdir(r) and r.rsplit("_s", 1)[1].isdigit()]
        runs.sort(key=lambda r: int(r.rsplit("_s", 1)[1]))
        rows = []
        for run in runs:
            cfg = load_config(os.path.join(run, "config.yaml"))
            root = os.path.dirname(os.path.abspath(run))
            bv = _cached_eval(cfg, None, None, n_seeds, "val", root)
            bh = _cached_eval(cfg, None, None, n_seeds, "heldout", root)
            best = None
            for ck in list_checkpoints(run):
                m = _cached_eval(cfg, run, ck, n_seeds, "val", run)
                dc, dfd = m["correctness"] - bv["correctness"], 100 * (m["fd_exemplar"] / bv["fd_exemplar"] - 1)
                if dc >= -margin and (best is None or dfd < best[2]):
                    best = (ck, dc, dfd)
            if best is None:
                print(f"| {os.path.basename(prefix)} | {run.rsplit('_s', 1)[1]} | none passes | | | | | | | no |")
                rows.append(None)
                continue
            m = _cached_eval(cfg, run, best[0], n_seeds, "heldout", run)
            dc, dfd = m["correctness"] - bh["correctness"], 100 * (m["fd_exemplar"] / bh["fd_exemplar"] - 1)
            ok = dc >= -0.05 and dfd <= -40
            rows.append((m["correctness"], dc, dfd, m["fd"] / bh["fd"], m["thick_share"], ok))
            print(f"| {os.path.basename(prefix)} | {run.rsplit('_s', 1)[1]} | {os.path.basename(best[0])} | "
                  f"{best[1]:+.3f} | {best[2]:+.0f} % | {m['correctness']:.3f} ({dc:+.3f}) | {m['fd_exemplar']:.1f} "
                  f"({dfd:+.0f} %) | {m['fd']:.1f} ({m['fd'] / bh['fd']:.2f}×) | {m['thick_share']:.2f} | "
                  f"{'yes' if ok else 'no'} |", flush=True)
        groups.append((os.path.basename(prefix), rows))
    print("\nheld-out, mean ± sd [min, max] over training seeds at the val-picked checkpoints")
    print("| group | seeds | correctness | Δ correctness | FD to refs Δ % | FD to real × base | thick share | "
          "seeds meeting clause 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in groups:
        ok = [r for r in rows if r is not None]
        if not ok:
            continue
        cols = [_spread([r[j] for r in ok]) for j in range(5)]
        fmt = ["{:.3f} ± {:.3f} [{:.3f}, {:.3f}]", "{:+.3f} ± {:.3f} [{:+.3f}, {:+.3f}]",
               "{:+.0f} ± {:.0f} [{:+.0f}, {:+.0f}]", "{:.2f} ± {:.2f} [{:.2f}, {:.2f}]",
               "{:.2f} ± {:.2f} [{:.2f}, {:.2f}]"]
        print(f"| {name} | {len(ok)} of {len(rows)} | " + " | ".join(f.format(*c) for f, c in zip(fmt, cols))
              + f" | {sum(r[5] for r in ok)}/{len(rows)} |")


def _ckpt(run, name):
    return None if name == "base" else os.path.join(run, "checkpoints", name)


def evaluate_runs(runs, at, n_seeds):
    from genalign.config import load_config
    from genalign.trainer import list_checkpoints

    toy_learning.EXEMPLAR = EXEMPLAR
    toy_learning.EXTRA_REWARDS = ["ink"]
    print("| run | checkpoint | policy steps | trajectories | train CPU s | correctness | FD to refs | FD to real | "
          "thick share | ink | diversity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base_done = False
    for run in runs:
        cfg = load_config(os.path.join(run, "config.yaml"))
        cpu_file = os.path.join(run, "bench_cpu.json")
        cpu = json.load(open(cpu_file))["cpu_seconds"] if os.path.exists(cpu_file) else float("nan")
        rows = [] if base_done else [("base", None, {"part_steps": {"policy": 0}, "counters": {"trajectories": 0}})]
        base_done = True
        for ck in list_checkpoints(run):
            it = int(ck.rsplit("-", 1)[1])
            if at and it not in at:
                continue
            rows.append((os.path.basename(ck), ck, json.load(open(os.path.join(ck, "trainer_state.json")))))
        for name, ck, st in rows:
            m = toy_learning.evaluate(cfg, ck, n_seeds)
            steps = st.get("part_steps", {}).get("policy", st.get("optimizer_step", "?"))
            last = ck is not None and ck == list_checkpoints(run)[-1]
            print(f"| {os.path.basename(run) if ck else 'base'} | {name} | {steps} | {st['counters']['trajectories']} "
                  f"| {f'{cpu:.0f}' if last else ''} | {m['correctness']:.3f} | {m['fd_exemplar']:.1f} | {m['fd']:.1f} "
                  f"| {m['thick_share']:.2f} | {m['ink']:.3f} | {m['diversity']:.2f} |", flush=True)


def grid(run, name, out_png, n_seeds=8):
    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.media import image_grid
    from genalign.registry import MODELS

    cfg = load_config(os.path.join(run, "config.yaml"))
    gen = MODELS.get(cfg.model.family).load(cfg.model, device="cpu")
    if _ckpt(run, name):
        gen.load_checkpoint(_ckpt(run, name))
    prompts = read_prompts(cfg.data.eval_prompts or cfg.data.prompts)
    x, P = toy_learning.held_out_samples(gen, cfg.sampler, prompts, n_seeds)
    S = [1000 + i for _ in prompts for i in range(n_seeds)]
    im = image_grid(x, len(prompts), n_seeds, P, S)
    im = im.convert("P", palette=1, colors=64)  # small files (grey digits)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    im.save(out_png, optimize=True)
    print(f"{out_png}: {os.path.getsize(out_png)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--out", required=True)
    t.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="training seeds: one run OUT_s<seed> each (train.seed=<seed>)")
    sd = sub.add_parser("seeds", help="runs PREFIX_s<k> of each group, each and mean ± spread")
    sd.add_argument("prefixes", nargs="+")
    sd.add_argument("--at", type=int, nargs="*", default=[], help="checkpoint iterations (default: all)")
    sd.add_argument("--seeds", type=int, default=32, help="sample seeds per prompt")
    sd.add_argument("--split", choices=sorted(SPLITS), default="val")
    e = sub.add_parser("eval")
    e.add_argument("runs", nargs="+")
    e.add_argument("--at", type=int, nargs="*", default=[], help="checkpoint iterations (default: all)")
    e.add_argument("--seeds", type=int, default=32)
    es = sub.add_parser("earlystop", help="per run: checkpoint picked on val, reported on held-out")
    es.add_argument("prefixes", nargs="+")
    es.add_argument("--seeds", type=int, default=32, help="sample seeds per prompt")
    es.add_argument("--margin", type=float, default=0.03, help="val Δ correctness ≥ −margin to be eligible")
    g = sub.add_parser("grid")
    g.add_argument("run")
    g.add_argument("checkpoint", help="checkpoint-N, or 'base'")
    g.add_argument("png")
    args, extra = ap.parse_known_args()
    if extra and args.cmd != "train":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from genalign.cli import quiet_libraries

    quiet_libraries()
    if args.cmd == "train" and args.seeds is not None:
        for sd in args.seeds:
            train(args.config, f"{args.out}_s{sd}", [*extra, f"train.seed={sd}"])
    elif args.cmd == "train":
        train(args.config, args.out, extra)
    elif args.cmd == "earlystop":
        early_stop(args.prefixes, args.seeds, args.margin)
    elif args.cmd == "seeds":
        seed_groups(args.prefixes, set(args.at), args.seeds, args.split)
    elif args.cmd == "eval":
        evaluate_runs(args.runs, set(args.at), args.seeds)
    else:
        grid(args.run, args.checkpoint, args.png)


if __name__ == "__main__":
    main()
