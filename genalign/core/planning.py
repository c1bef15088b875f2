"""The iteration's global batch, a pure function of (seed, iteration): prompts (with their metadata), group ids,
per-sample seeds and the trained steps of each sample. Identical on every process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .seeding import derive_seed, torch_generator


@dataclass
class Plan:
    prompts: List[str]
    metadata: List[Dict[str, Any]]
    group_ids: torch.Tensor
    seeds: List[int]
    noise_seeds: List[int]
    window_start: Optional[int]

    def shard(self, lo: int, hi: int) -> "Plan":
        return Plan(self.prompts[lo:hi], self.metadata[lo:hi], self.group_ids[lo:hi], self.seeds[lo:hi],
                    self.noise_seeds[lo:hi], self.window_start)


def window_starts(scfg) -> int:
    """``train_timesteps: window``: how many start steps the window is drawn from (0 .. this − 1)."""
    return max(1, int(scfg.window_range * scfg.num_steps) - scfg.window_size + 1)


def plan(cfg, records: List[Dict[str, Any]], iteration: int) -> Plan:
    """``records``: the training prompts as dicts with a ``prompt`` key and any per-prompt fields."""
    rng = np.random.default_rng(derive_seed(cfg.train.seed, iteration, 1))
    k = cfg.data.prompts_per_iteration
    chosen = rng.choice(len(records), size=k, replace=k > len(records))
    prompts, meta, groups, seeds, noise_seeds = [], [], [], [], []
    for gi, pi in enumerate(chosen):
        for j in range(cfg.data.group_size):
            rec = records[int(pi)]
            prompts.append(rec["prompt"])
            meta.append({kk: v for kk, v in rec.items() if kk != "prompt"})
            groups.append(gi)
            seeds.append(derive_seed(cfg.train.seed, iteration, gi, j))
            noise_seeds.append(derive_seed(cfg.train.seed, iteration, gi, 0 if cfg.sampler.same_initial_noise else j))
    window_start = None
    T = cfg.sampler.num_steps
    if cfg.sampler.train_timesteps == "window":
        window_start = int(rng.integers(0, window_starts(cfg.sampler)))
    elif cfg.sampler.train_timesteps == "sliding_window":  # MixGRPO progressive: high -> low noise
        span = max(1, T - cfg.sampler.window_size)
        window_start = min(span, int(iteration * span / max(cfg.train.iterations - 1, 1)))
    return Plan(prompts, meta, torch.tensor(groups), seeds, noise_seeds, window_start)


def train_steps_for(scfg, seeds: List[int], stochastic: torch.Tensor) -> torch.Tensor:
    """(n, K) indices of the trained steps of each sample (METHODS.md §3.4)."""
    T = scfg.num_steps
    avail = torch.nonzero(stochastic).flatten()
    scheme = scfg.train_timesteps
    if scheme in ("all_but_last", "window", "sliding_window"):
        if scheme == "all_but_last":
            avail = avail[avail < max(1, int(T * scfg.timestep_fraction))]
        return avail.expand(len(seeds), -1).clone()
    k = max(1, int(len(avail) * scfg.timestep_fraction))
    rows = []
    for sd in seeds:  # DDPO/DanceGRPO: random permutation per sample, from the sample's own seed
        rows.append(avail[torch.randperm(len(avail), generator=torch_generator(sd, 7))[:k]])
    return torch.stack(rows)
