"""The one evaluation path: training's periodic evals, ``genalign eval`` and ``genalign sample`` all go through it.

    items = eval_items(prompts, seeds)                         # prompt-major (prompt, seed) pairs
    samples = generate(gen, [p for p, _ in mine], [s for _, s in mine], scfg)   # any shard of the items
    scores = score_samples(rewards, samples, prompts_per_item)  # {name: (N,) tensor}, on the gathered batch
    summary = summarize(scores, weights)                        # {"reward_mean": ..., name: mean}
    write_evaluation(out_dir, tag, samples, prompts_per_item, seeds_per_item, n_prompts, n_seeds, scores,
                     modality, sample_rate, weights=weights, iteration=it)   # main process only

``generate`` uses the deterministic sampler (``rollout(..., stochastic=False)``) and per-sample seeds, so a shard's
samples equal the same items' samples of a single-process run: a trainer can split the items over processes,
gather them back in item order (:func:`order_by_items`) and score the whole batch (set rewards need all of it).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .io import append_jsonl
from .media import write_media


def eval_items(prompts: Sequence[str], seeds: Sequence[int]) -> List[Tuple[str, int]]:
    """Every (prompt, seed), prompt-major: the order of the grid (rows = prompts, columns = seeds)."""
    return [(p, int(s)) for p in prompts for s in seeds]


def unique_names(names: Sequence[str]) -> List[str]:
    """Reward names made unique by suffixing repeats: ``[a, a, b] -> [a, a_2, b]``."""
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


@torch.no_grad()
def generate(generator, prompts: Sequence[str], seeds: Sequence[int], scfg, num_steps: Optional[int] = None,
             guidance_scale: Optional[float] = None, batch_size: int = 8, model=None) -> torch.Tensor:
    """Deterministic samples for the items ``(prompts[k], seeds[k])``, in that order, on the CPU (float32).

    ``model`` is passed to ``rollout`` (e.g. the trainer's wrapped denoiser); ``None`` = the generator's own."""
    if len(prompts) != len(seeds):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds (one of each per item)")
    outs = []
    for a in range(0, len(prompts), max(1, int(batch_size))):
        ro = generator.rollout(list(prompts[a : a + batch_size]), [int(s) for s in seeds[a : a + batch_size]], scfg,
                               num_steps=num_steps, guidance_scale=guidance_scale, stochastic=False, model=model)
        outs.append(ro.samples.detach().float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def order_by_items(parts: Sequence[Tuple[Sequence[Any], torch.Tensor]], items: Sequence[Any]) -> torch.Tensor:
    """Reassemble gathered shards ``[(their items, their samples), ...]`` into the order of ``items``."""
    by_item = {}
    for its, samples in parts:
        for k, it in enumerate(its):
            by_item[tuple(it) if isinstance(it, list) else it] = samples[k]
    return torch.stack([by_item[it] for it in items])


@torch.no_grad()
def score_samples(rewards, samples: torch.Tensor, prompts: Sequence[str], metadata=None,
                  names: Optional[Sequence[str]] = None, device=None) -> Dict[str, torch.Tensor]:
    """``{name: (N,) float tensor on the CPU}``, one entry per reward (NaN = not applicable). ``names`` default
    to the rewards' names made unique; ``device`` (default: the samples') is where the rewards see the samples."""
    rewards = list(rewards or [])
    names = list(names) if names is not None else unique_names([r.name for r in rewards])
    x = samples if device is None else samples.to(device)
    return {n: r(x, list(prompts), metadata).detach().float().cpu() for r, n in zip(rewards, names)}


def summarize(scores: Dict[str, torch.Tensor], weights: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """Mean of each reward over the samples it applies to, and ``reward_mean``: the mean of the weighted sum
    (:func:`~genalign.algorithms.advantages.aggregate_rewards`; weights default to 1). Empty scores -> ``{}``."""
    if not scores:
        return {}
    from .algorithms.advantages import aggregate_rewards

    names = list(scores)
    w = list(weights) if weights is not None else [1.0] * len(names)
    combined = aggregate_rewards(torch.stack([scores[n].float() for n in names], 1), w)
    out = {"reward_mean": _nanmean(combined)}
    out.update({n: _nanmean(scores[n]) for n in names})
    return out


def _nanmean(v: torch.Tensor) -> float:
    ok = ~torch.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _nanstd(v: torch.Tensor) -> float:
    ok = ~torch.isnan(v)
    return float(v[ok].std()) if ok.sum() > 1 else 0.0


def score_table(scores: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """``{name: {"mean", "std"}}`` over the samples each reward applies to (``genalign eval``'s metrics.json)."""
    return {n: {"mean": _nanmean(v), "std": _nanstd(v)} for n, v in scores.items()}


def write_evaluation(out_dir: str, tag: str, samples: torch.Tensor, prompts_per_item: Sequence[str],
                     seeds_per_item: Sequence[int], n_prompts: int, n_seeds: int,
                     scores: Optional[Dict[str, torch.Tensor]], modality: str, sample_rate: Optional[int] = None,
                     iteration: Optional[int] = None, weights: Optional[Sequence[float]] = None,
                     subdir: Optional[str] = None, per_sample: bool = True) -> Dict[str, Any]:
    """Write the media of one evaluation (:func:`genalign.media.write_media`: grid ``out_dir/<tag>.png``,
    per-sample files under ``out_dir/<subdir or tag>``) and append one record per sample to
    ``out_dir/samples.jsonl`` (``tag``, ``iteration`` when given, ``prompt``, ``seed``, ``index``, ``file`` and
    ``grid`` relative to ``out_dir``, ``rewards``) plus one summary line (:func:`summarize`) to
    ``out_dir/evals.jsonl``. Call it on the main process only. Returns the written paths, the records and the
    summary."""
    scores = scores or {}
    paths = write_media(samples, modality, out_dir, tag, list(prompts_per_item), [int(s) for s in seeds_per_item],
                        n_prompts, n_seeds, scores=scores, sample_rate=sample_rate, subdir=subdir,
                        per_sample=per_sample)
    grid = os.path.relpath(paths["grid"], out_dir)
    files = [os.path.relpath(f, out_dir) for f in paths["files"]]
    records = []
    for k, (p, s) in enumerate(zip(prompts_per_item, seeds_per_item)):
        rec = {"tag": tag, "prompt": p, "seed": int(s), "index": k, "file": files[k] if files else grid,
               "grid": grid, "rewards": {n: float(v[k]) for n, v in scores.items()}}
        if iteration is not None:
            rec["iteration"] = int(iteration)
        append_jsonl(os.path.join(out_dir, "samples.jsonl"), rec)
        records.append(rec)
    summary = summarize(scores, weights)
    line = {"tag": tag, "num_samples": len(records), **summary}
    if iteration is not None:
        line["iteration"] = int(iteration)
    append_jsonl(os.path.join(out_dir, "evals.jsonl"), {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                        for k, v in line.items()})
    return {**paths, "records": records, "summary": summary}


def media_kwargs(generator) -> Dict[str, Any]:
    """``modality`` and ``sample_rate`` for :func:`write_evaluation`, from the generator's output spec."""
    spec = generator.output_spec()
    return {"modality": spec.modality, "sample_rate": spec.sample_rate or None}


def sample_and_write(generator, prompts: Sequence[str], seeds: Sequence[int], scfg, out_dir: str, tag: str = "grid",
                     num_steps: Optional[int] = None, guidance_scale: Optional[float] = None, batch_size: int = 8,
                     rewards=None, subdir: Optional[str] = "", iteration: Optional[int] = None,
                     before_write=None) -> Dict[str, Any]:
    """Single-process convenience for ``genalign sample`` / ``genalign eval``: generate every (prompt, seed),
    score with ``rewards``, write the media and records. Returns :func:`write_evaluation`'s dict plus ``scores``."""
    items = eval_items(prompts, seeds)
    ps, ss = [p for p, _ in items], [s for _, s in items]
    samples = generate(generator, ps, ss, scfg, num_steps=num_steps, guidance_scale=guidance_scale,
                       batch_size=batch_size)
    rewards = list(rewards or [])
    scores = score_samples(rewards, samples, ps, device=getattr(generator, "device", None))
    if before_write is not None:  # e.g. clear earlier outputs only once the new ones exist
        before_write()
    out = write_evaluation(out_dir, tag, samples, ps, ss, len(prompts), len(seeds), scores, subdir=subdir,
                           iteration=iteration, weights=[getattr(r, "weight", 1.0) for r in rewards],
                           **media_kwargs(generator))
    out["scores"] = scores
    return out
