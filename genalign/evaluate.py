"""``genalign eval CONFIG [--checkpoint CKPT]``: score a model (optionally with a trained checkpoint, LoRA or full) on a prompt set
with the recipe's rewards, deterministic sampler, fixed seeds -> metrics.json (+ samples and a grid)."""

from __future__ import annotations

import os

import torch

from .errors import GenalignError
from .io import atomic_write_json, read_prompts


def evaluate_main(args) -> int:
    from .config import load_config
    from .evaluation import sample_and_write, score_table
    from .registry import MODELS
    from .rewards.base import build_rewards

    if not args.config:
        raise GenalignError("give a recipe CONFIG (its model and rewards are used), or --benchmark for GUI grounding")
    cfg = load_config(args.config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from .core.hostmem import tune_host_malloc

    tune_host_malloc(cfg.train.host_malloc, on_accelerator=device != "cpu")
    if not args.checkpoint:
        cfg.model.lora.rank = 0  # the base model itself
    gen = MODELS.get(cfg.model.family).load(cfg.model, device=device)
    if args.checkpoint:
        gen.load_checkpoint(args.checkpoint)  # LoRA or full fine-tune, as the recipe trained it
    rewards = [r.to(device) for r in build_rewards(cfg.rewards)]
    src = args.prompts or cfg.data.eval_prompts or cfg.data.prompts
    prompts = read_prompts(src)
    seeds = args.seeds or cfg.data.eval_seeds
    tag = os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint else "base"
    out = args.out or os.path.join(cfg.run.output_dir, "eval", tag, "metrics.json")
    samples_dir = os.path.join(os.path.dirname(out), "samples")
    earlier = os.path.exists(out) or (os.path.isdir(samples_dir) and bool(os.listdir(samples_dir)))
    if earlier and not getattr(args, "overwrite", False):
        raise GenalignError(f"'{out}' already holds an evaluation; pass --out elsewhere or --overwrite to replace it")
    import shutil

    # --overwrite: the earlier samples go only once the new ones are sampled and scored (nothing lost on a failure)
    clear = (lambda: shutil.rmtree(samples_dir, ignore_errors=True)) if earlier else None
    ev = sample_and_write(gen, prompts, seeds, cfg.sampler, samples_dir, num_steps=cfg.sampler.eval_num_steps,
                          rewards=rewards, before_write=clear)
    metrics = {"num_samples": len(ev["records"]), "checkpoint": args.checkpoint, "model": cfg.model.path,
               **score_table(ev["scores"])}
    if rewards:
        metrics["reward_mean"] = ev["summary"]["reward_mean"]  # weighted as in training
    atomic_write_json(out, metrics)
    print(f"genalign: wrote {os.path.abspath(out)} and {os.path.abspath(os.path.dirname(ev['grid']))}")
    if rewards:
        print(f"  reward_mean: {metrics['reward_mean']:.4f}")
    for k, v in metrics.items():
        if isinstance(v, dict):
            print(f"  {k}: {v['mean']:.4f} ± {v['std']:.4f}")
    return 0
