"""Group-relative advantages (METHODS.md §3.1) and multi-reward aggregation.

A_i = clip((R_i − mean_{g(i)} R) / (std + eps), −A_max, A_max), g(i) = the samples sharing i's prompt.
``std="group"`` uses the group's std, ``"global"`` the std of all rewards of the iteration (Flow-GRPO SD3
configs), ``"batch"`` mean and std over the whole batch (no grouping). Zero-variance groups get A ≡ 0 and are
counted (``zero_std_ratio``); ``drop_zero_std`` marks them for removal from the update. ``group_std`` is the mean
within-group std of the (aggregated) reward: the signal a group-relative advantage has to work with — when a
prompt's samples agree, it cannot tell a better one from a worse, however far from the optimum they all are.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Dict, Sequence, Tuple

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    std: str = "group",
    eps: float = 1e-4,
    clip: float = 5.0,
    unbiased: bool = False,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Advantages for one reward vector. NaN rewards (not applicable) get A = 0 and do not enter statistics."""
    r = rewards.double()
    valid = torch.isfinite(r)
    adv = torch.zeros_like(r)
    zero_std_groups = 0
    groups = torch.unique(group_ids)
    if std == "batch":
        v = r[valid]
        s = v.std(unbiased=unbiased) if v.numel() > 1 else torch.tensor(0.0, dtype=r.dtype)
        adv[valid] = (v - v.mean()) / (s + eps)
        return adv.clamp(-clip, clip).float(), {"zero_std_ratio": float(s <= 0), "_zero_mask": ~valid & valid}
    global_std = None
    if std == "global":
        v = r[valid]
        global_std = v.std(unbiased=unbiased) if v.numel() > 1 else torch.tensor(0.0, dtype=r.dtype)
    elif std != "group":
        raise ValueError(f"std must be 'group', 'global' or 'batch', got {std!r}")
    zero_mask = torch.zeros_like(valid)
    for g in groups:
        m = (group_ids == g) & valid
        if not m.any():
            continue
        v = r[m]
        if v.numel() < 2 or torch.all(v == v[0]):
            zero_std_groups += 1
            zero_mask |= m
            continue  # A ≡ 0
        s = global_std if global_std is not None else v.std(unbiased=unbiased)
        adv[m] = (v - v.mean()) / (s + eps)
    adv = adv.clamp(-clip, clip).float()
    stats = {"zero_std_ratio": zero_std_groups / max(len(groups), 1)}
    return adv, stats | {"_zero_mask": zero_mask}


class PerPromptStatTracker:
    """DDPO's per-prompt reward buffer: normalise by the last ``buffer_size`` rewards of the same prompt,
    falling back to batch statistics until ``min_count`` rewards were seen (METHODS.md §3.1)."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: Dict[str, deque] = defaultdict(lambda: deque(maxlen=buffer_size))

    def update(self, prompts: Sequence[str], rewards: torch.Tensor, eps: float = 1e-6, clip: float = 5.0):
        r = rewards.double()
        adv = torch.zeros_like(r)
        ok = torch.isfinite(r)  # NaN (not applicable): advantage 0, kept out of the buffers and batch statistics
        batch_mean, batch_std = (r[ok].mean(), r[ok].std(unbiased=False)) if ok.any() else (r.new_zeros(()),) * 2
        for p in sorted(set(prompts)):
            idx = [i for i, q in enumerate(prompts) if q == p and bool(ok[i])]
            if not idx:
                continue
            self.buffers[p].extend(r[idx].tolist())
            buf = torch.tensor(list(self.buffers[p]), dtype=torch.float64)
            if len(buf) < self.min_count:
                mean, s = batch_mean, batch_std
            else:
                mean, s = buf.mean(), buf.std(unbiased=False)
            adv[idx] = (r[idx] - mean) / (s + eps)
        return adv.clamp(-clip, clip).float()

    def state_dict(self):
        return {p: list(b) for p, b in self.buffers.items()}

    def load_state_dict(self, sd):
        for p, b in sd.items():
            self.buffers[p] = deque(b, maxlen=self.buffer_size)


def aggregate_rewards(per_reward: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``sum_then_normalize``: R = Σ_k w_k R_k over the rewards that apply (NaN = not applicable).

    A sample to which no reward applies gets NaN."""
    w = torch.as_tensor(list(weights), dtype=per_reward.dtype)
    applies = ~torch.isnan(per_reward)
    total = torch.where(applies, per_reward * w, torch.zeros_like(per_reward)).sum(1)
    return torch.where(applies.any(1), total, torch.full_like(total, float("nan")))


def mean_group_std(rewards: torch.Tensor, group_ids: torch.Tensor, unbiased: bool = False) -> float:
    """The mean over groups of the std of their finite rewards (groups with fewer than two are left out; NaN if
    none has two)."""
    r = rewards.double()
    stds = []
    for g in torch.unique(group_ids):
        v = r[(group_ids == g) & torch.isfinite(r)]
        if v.numel() >= 2:
            stds.append(float(v.std(unbiased=unbiased)))
    return sum(stds) / len(stds) if stds else float("nan")


def combined_advantages(
    per_reward: torch.Tensor,
    weights: Sequence[float],
    group_ids: torch.Tensor,
    mode: str = "sum_then_normalize",
    **kw,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Advantages from K rewards (N, K): ``sum_then_normalize`` (Flow-GRPO ``multi_score``) or
    ``normalize_then_sum`` (one group advantage per reward, weighted sum; DanceGRPO-style)."""
    total = aggregate_rewards(per_reward, weights)
    group_std = mean_group_std(total, group_ids, kw.get("unbiased", False))
    if mode == "sum_then_normalize":
        adv, st = group_advantages(total, group_ids, **kw)
        return adv, st | {"group_std": group_std}
    if mode == "normalize_then_sum":
        advs, zs = [], []
        for k in range(per_reward.shape[1]):
            a, st = group_advantages(per_reward[:, k], group_ids, **kw)
            advs.append(a * float(weights[k]))
            zs.append(st["zero_std_ratio"])
        adv = torch.stack(advs, 1).sum(1)
        return adv, {"zero_std_ratio": sum(zs) / len(zs), "group_std": group_std,
                     "_zero_mask": torch.zeros(per_reward.shape[0], dtype=torch.bool)}
    raise ValueError(f"unknown aggregation mode {mode!r}")
