"""The trainer's evaluation: the fixed prompts × seeds, sharded over processes, sampled deterministically,
gathered, scored and written (media + samples.jsonl) on the main process."""

from __future__ import annotations

import os
from typing import Dict

import torch

from ..io import append_jsonl


def evaluate_items(host, iteration: int) -> Dict[str, float]:
    from ..algorithms.advantages import aggregate_rewards
    from ..sampling import save_grid

    cfg, acc = host.cfg, host.accelerator
    items = [(p, s) for p in host.eval_prompts for s in cfg.data.eval_seeds]
    mine = items[host.rank :: host.world]
    outs = []
    bs = cfg.train.rollout_batch_size
    for a in range(0, len(mine), bs):
        chunk = mine[a : a + bs]
        ro = host.generator.rollout([p for p, _ in chunk], [s for _, s in chunk], cfg.sampler,
                                    num_steps=cfg.sampler.eval_num_steps, stochastic=False)
        outs.append(ro.samples.cpu())
    local = torch.cat(outs) if outs else torch.zeros(0)
    if host.world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(mine, local)])
    else:
        parts = [(mine, local)]
    by_item = {}
    for its, samples in parts:
        for k, it in enumerate(its):
            by_item[it] = samples[k]
    samples = torch.stack([by_item[it] for it in items])
    prompts = [p for p, _ in items]
    scores = {name: r(samples.to(acc.device), prompts).cpu() for r, name in zip(host.rewards, host.reward_names)}
    result: Dict[str, float] = {}
    if host.rewards:
        combined = aggregate_rewards(torch.stack([scores[n] for n in host.reward_names], 1),
                                     [r.weight for r in host.rewards])
        result["reward_mean"] = float(torch.nanmean(combined))
        for name in host.reward_names:
            result[name] = float(torch.nanmean(scores[name]))
    if host.is_main:
        fname = f"iter_{iteration:06d}.png"
        save_grid(samples, len(host.eval_prompts), len(cfg.data.eval_seeds), os.path.join(host.out, "samples", fname))
        for k, (p, s) in enumerate(items):
            append_jsonl(os.path.join(host.out, "samples", "samples.jsonl"),
                         {"iteration": iteration, "prompt": p, "seed": s, "file": fname, "index": k,
                          "rewards": {n: float(scores[n][k]) for n in host.reward_names}})
    return result
