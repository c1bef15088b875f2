"""The trainer's evaluation, on the one evaluation path (:mod:`genalign.evaluation`): the fixed prompts × seeds,
sharded over processes, sampled deterministically, gathered in item order, scored on the whole batch, and written
(media per modality, samples.jsonl, evals.jsonl) on the main process."""

from __future__ import annotations

import os
from typing import Dict

from ..evaluation import eval_items, generate, media_kwargs, order_by_items, score_samples, summarize, write_evaluation
from .fsdp import is_fsdp


def evaluate_items(host, iteration: int) -> Dict[str, float]:
    cfg = host.cfg
    items = eval_items(host.eval_prompts, cfg.data.eval_seeds)
    mine = items[host.rank :: host.world]
    run = mine
    if host.world > 1 and is_fsdp(host.accelerator):  # a sharded forward is a collective: every process samples
        run = mine + [items[0]] * (-(-len(items) // host.world) - len(mine))  # as many items (extras dropped)
    local = generate(host.generator, [p for p, _ in run], [s for _, s in run], cfg.sampler,
                     num_steps=cfg.sampler.eval_num_steps, batch_size=cfg.train.rollout_batch_size)[:len(mine)]
    if host.world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(mine, local)])
    else:
        parts = [(mine, local)]
    samples = order_by_items(parts, items)
    prompts = [p for p, _ in items]
    weights = [r.weight for r in host.rewards]
    scores = score_samples(host.rewards, samples, prompts, names=host.reward_names, device=host.device)
    result = summarize(scores, weights)
    if host.is_main:
        write_evaluation(os.path.join(host.out, "samples"), f"iter_{iteration:06d}", samples, prompts,
                         [s for _, s in items], len(host.eval_prompts), len(cfg.data.eval_seeds), scores,
                         iteration=iteration, weights=weights, **media_kwargs(host.generator))
    return result
