#!/usr/bin/env python
"""MARBLE's cost: one amortised MARBLE iteration (K rewards, per-reward gradients every `period` optimiser steps)
as a ratio of one single-reward DiffusionNFT iteration, measured side by side in one run on one device.

    HF_HUB_OFFLINE=1 python scripts/bench/marble_overhead.py                        # configs/toy/marble.yaml
    HF_HUB_OFFLINE=1 python scripts/bench/marble_overhead.py --config my.yaml --iterations 20 train.rollout_batch_size=16
    HF_HUB_OFFLINE=1 python scripts/bench/marble_overhead.py --iterations 10 algorithm.period=10 algorithm.refresh_fraction=0.25

Both runs use the same config (model, sampler, batch, LoRA); the NFT run keeps only the first reward and the
NFT hyper-parameters of the MARBLE section. Iterations alternate (NFT i, MARBLE i, ...) so machine load drifts
affect both alike; the first `--warmup` iterations of each are not timed. An iteration = rollout + rewards +
advantages + update + old-policy update (no evaluation, no checkpoint). MARBLE's refresh happens on its
optimiser steps 0, M, 2M, ...; time a whole number of periods (the default) for the amortised figure.
Prints the mean seconds per iteration, the update-only ratio and the device. (METHODS.md §13: MARBLE reports
0.97× baseline speed on SD3.5-M.)
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genalign.algorithms.advantages import aggregate_rewards  # noqa: E402
from genalign.config import load_yaml, build_config  # noqa: E402
from genalign.trainer import Trainer  # noqa: E402

NFT_KEYS = ("beta", "adv_clip_max", "adv_std", "adv_eps", "ref_weight", "kl_space", "decay_type", "timestep_sampling",
            "timestep_fraction", "num_train_timesteps", "t_min", "t_max", "rollout_guidance_scale", "rollout_steps",
            "min_weight")


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def one_iteration(tr: Trainer, it: int):
    t0 = time.perf_counter()
    ro = tr.do_rollout(it)
    per_reward, groups, prompts = tr.score(ro)
    weights = [r.weight for r in tr.rewards]
    adv, _, keep = tr.algorithm.advantages(per_reward, weights, groups, prompts, tr.cfg.reward_aggregation)
    keep_f = keep.float().reshape(-1, *([1] * (adv.ndim - 1)))
    adv_local = (adv * keep_f)[: tr.n_local]
    t1 = time.perf_counter()
    out = tr.algorithm.update(tr, ro, adv_local)
    if out is None:
        out = tr.update(ro, adv_local)
    tr.algorithm.after_iteration(tr)
    tr.iteration += 1
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, out, float(aggregate_rewards(per_reward, weights).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/toy/marble.yaml", help="a MARBLE recipe (algorithm.name: marble)")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations (default: one MARBLE period)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations of each run first")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, applied to both runs")
    a = ap.parse_args(argv)
    raw = load_yaml(a.config)
    out_root = tempfile.mkdtemp(prefix="marble_overhead_")
    common = list(a.overrides) + ["run.log_with=[]", "run.progress=false", "train.eval_every=0"]
    mcfg = build_config(dict(raw), common + [f"run.output_dir={out_root}/marble"])
    if mcfg.algorithm.name != "marble":
        raise SystemExit(f"--config must be a MARBLE recipe (algorithm.name: marble), got '{mcfg.algorithm.name}'")
    nraw = dict(raw)
    alg = dict(raw["algorithm"])
    nraw["algorithm"] = {"name": "nft", **{k: v for k, v in alg.items() if k in NFT_KEYS}}
    nraw["rewards"] = [raw["rewards"][0]]
    # MARBLE-only algorithm overrides (period, refresh_fraction, ...) do not reach the NFT run
    nft_common = [o for o in common
                  if not o.startswith("algorithm.") or o.split("=", 1)[0][len("algorithm."):] in NFT_KEYS]
    ncfg = build_config(nraw, nft_common + [f"run.output_dir={out_root}/nft"])
    period = int(mcfg.algorithm.args.get("period", 10))
    steps_per_it = mcfg.train.optimizer_steps_per_iteration * mcfg.train.inner_epochs
    n_iter = a.iterations or max(1, period // max(1, steps_per_it))
    trainers = {}
    for name, cfg in (("nft", ncfg), ("marble", mcfg)):
        tr = Trainer(cfg)
        tr.setup()
        trainers[name] = tr
    times = {k: [] for k in trainers}
    upd = {k: [] for k in trainers}
    refreshes = 0
    for i in range(a.warmup + n_iter):
        for name, tr in trainers.items():
            total, update, out, _ = one_iteration(tr, i)
            if i >= a.warmup:
                times[name].append(total)
                upd[name].append(update)
                if name == "marble" and "marble/refresh" in out:
                    refreshes += 1
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    umean = {k: sum(v) / len(v) for k, v in upd.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    K = len(mcfg.rewards)
    print(f"device: {device_name()}")
    print(f"config: {a.config}  K={K} rewards  period={period}  timed iterations={n_iter} (MARBLE refreshes: "
          f"{refreshes})  batch={mcfg.data.prompts_per_iteration}x{mcfg.data.group_size}")
    print(f"NFT (1 reward):        {mean['nft']:.3f} s/iteration (update {umean['nft']:.3f} s)")
    print(f"MARBLE (K={K}, amortised): {mean['marble']:.3f} s/iteration (update {umean['marble']:.3f} s)")
    print(f"ratio MARBLE/NFT per iteration: {mean['marble'] / mean['nft']:.3f}   "
          f"(speed {mean['nft'] / mean['marble']:.3f}x of NFT); update-only ratio: {umean['marble'] / umean['nft']:.3f}")
    print(f"median-based ratio (robust to load spikes on shared machines): {med['marble'] / med['nft']:.3f}")
    print("per-iteration seconds: " + "; ".join(f"{k}: " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
