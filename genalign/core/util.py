"""Small helpers of the training loop: joining rollout chunks, gathering lists across processes, flattening the
config for trackers, and telling whether an accelerator is present."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..models.base import Rollout, cat_cond


def cat_rollouts(parts: List[Rollout]) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    p0 = parts[0]

    def cat(name):
        return None if getattr(p0, name) is None else torch.cat([getattr(p, name) for p in parts])

    return Rollout(prompts=sum((p.prompts for p in parts), []), seeds=sum((p.seeds for p in parts), []),
                   group_ids=cat("group_ids"), cond=cat_cond([p.cond for p in parts]), states=cat("states"),
                   log_probs=cat("log_probs"), means=cat("means"), train_steps=cat("train_steps"),
                   schedule=p0.schedule, guidance_scale=p0.guidance_scale, samples=cat("samples"),
                   metadata=sum((p.metadata for p in parts), []))


def has_accelerator_device() -> bool:
    if torch.cuda.is_available():
        return True
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def gather_list(acc, items: List[Any]) -> List[Any]:
    if acc.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
