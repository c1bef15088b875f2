"""DRAGON: distributional rewards optimised through contrastive diffusion surrogates (METHODS.md §6).

Papers: DRAGON, "Distributional Rewards Optimize Diffusion Generative Models", arXiv 2504.15217;
Diffusion-DPO, arXiv 2311.12908 (``SalesforceAIResearch/DiffusionDPO: train.py``);
Diffusion-KTO, arXiv 2404.04465 (``jacklishufan/diffusion-kto: train_kto_sd_v1.5.py``).

The online loop: generate on-policy → score (instance, instance-to-set or set rewards) → split into D⁺ and
D⁻ → a contrastive loss against a frozen reference (base model / adapter disabled). This module holds:

* :func:`prediction_error` — per-sample mean-over-dims squared error of a denoiser output.
* :func:`diffusion_dpo_loss` (pairs) and :func:`diffusion_kto_loss` (unpaired sets).
* set construction **[R]** (DRAGON's own App. F procedure may differ):
  :func:`split_instance` (median / quantile split, per prompt group), :func:`leave_one_out_contributions`
  and :func:`split_by_contribution` (set rewards), :func:`make_pairs` (winner/loser pairs for DPO).

Errors: for VP ε-models the error is ‖ε − ε_θ(x_t, t)‖²; for rectified flow genalign uses the
v-error ‖(ε − x0) − v_θ(x_σ, σ)‖² (**[R]**: the flow adaptation is genalign's, not the papers'). A DPO pair
must share t and ε (and the reference must see exactly the same inputs).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from genalign.algorithms.conversions import as_float
from genalign.errors import ConfigError, choices

SPLIT_MODES = ("median", "quantile")


def prediction_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over non-batch dims of (pred − target)², in float32 → shape (N,).

    Targets: the model's noise law's ``target`` (``Generator.law``): ε for VP ε-prediction, the v / x0 target for
    other VP types, ε − x0 for rectified flow ([R] flow adaptation)."""
    err = (as_float(pred) - as_float(target)) ** 2
    return err.mean(dim=tuple(range(1, err.ndim))) if err.ndim > 1 else err


def diffusion_dpo_loss(
    err_theta_w: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_theta_l: torch.Tensor,
    err_ref_l: torch.Tensor,
    beta: float = 5000.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Diffusion-DPO (arXiv 2311.12908, Eq. 14 as implemented in DiffusionDPO ``train.py``).

    Inputs are per-pair errors (N,) from :func:`prediction_error`, winner (w) and loser (l) sharing t and ε.
    Δ = err_θ − sg(err_ref); L = mean −log σ(−½β(Δ_w − Δ_l)).
    Stats: ``implicit_acc`` = fraction with −½β(Δ_w − Δ_l) > 0; ``reward_margin`` = mean of that logit;
    ``model_err``/``ref_err`` = mean errors; ``delta_w``/``delta_l``.
    """
    if beta <= 0:
        raise ConfigError(f"DPO beta must be > 0, got {beta}")
    d_w = as_float(err_theta_w) - as_float(err_ref_w).detach()
    d_l = as_float(err_theta_l) - as_float(err_ref_l).detach()
    logit = -0.5 * beta * (d_w - d_l)
    loss = -F.logsigmoid(logit).mean()
    with torch.no_grad():
        stats = {
            "implicit_acc": (logit > 0).float().mean(),
            "reward_margin": logit.mean(),
            "model_err": 0.5 * (as_float(err_theta_w) + as_float(err_theta_l)).mean(),
            "ref_err": 0.5 * (as_float(err_ref_w) + as_float(err_ref_l)).mean(),
            "delta_w": d_w.mean(),
            "delta_l": d_l.mean(),
        }
    return loss, stats


def diffusion_kto_loss(
    err_theta: torch.Tensor,
    err_ref: torch.Tensor,
    is_positive: torch.Tensor,
    beta: float = 1000.0,
    lambda_pos: float = 1.0,
    lambda_neg: float = 1.0,
    all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Diffusion-KTO with the sigmoid utility (arXiv 2404.04465; METHODS §6).

    g = −(err_θ − sg(err_ref)); z₀ = max(0, sg(mean g)) where the mean is over the whole global batch —
    ``all_reduce`` (optional) sums a tensor over ranks, applied once to [Σg, count];
    u = y·β·(g − z₀) with y = +1 on D⁺ and −1 on D⁻; L = mean_i λ_{y_i}·(1 − σ(u_i)).
    Stats: ``z0``, ``utility_pos``/``utility_neg`` (mean σ(u) per side, NaN if a side is empty),
    ``g_pos``/``g_neg``, ``frac_pos``.
    """
    if beta <= 0:
        raise ConfigError(f"KTO beta must be > 0, got {beta}")
    err_theta = as_float(err_theta)
    pos = torch.as_tensor(is_positive, device=err_theta.device).bool().reshape(-1)
    g = -(err_theta - as_float(err_ref).detach())
    if pos.shape[0] != g.shape[0]:
        raise ValueError(f"is_positive has {pos.shape[0]} entries for {g.shape[0]} samples")
    with torch.no_grad():
        count = torch.tensor(float(g.shape[0]), dtype=torch.float64, device=g.device)
        acc = torch.stack([g.detach().sum().double(), count])
        if all_reduce is not None:
            acc = all_reduce(acc)
        z0 = (acc[0] / acc[1].clamp_min(1.0)).clamp_min(0.0).to(g.dtype)
    y = pos.to(g.dtype) * 2 - 1
    u = y * beta * (g - z0)
    lam = torch.where(pos, torch.full_like(g, lambda_pos), torch.full_like(g, lambda_neg))
    loss = (lam * (1 - torch.sigmoid(u))).mean()
    with torch.no_grad():
        s = torch.sigmoid(u)
        nan = torch.tensor(float("nan"), device=g.device)
        stats = {
            "z0": z0,
            "utility_pos": s[pos].mean() if pos.any() else nan,
            "utility_neg": s[~pos].mean() if (~pos).any() else nan,
            "g_pos": g[pos].mean() if pos.any() else nan,
            "g_neg": g[~pos].mean() if (~pos).any() else nan,
            "frac_pos": pos.float().mean(),
        }
    return loss, stats


# ----------------------------------------------------------------------------------- set construction
def _group_lists(n: int, groups) -> List[List[int]]:
    """Indices per group, groups in order of first appearance (ids may be ints, strings, a tensor)."""
    if groups is None:
        return [list(range(n))]
    keys = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(keys) != n:
        raise ValueError(f"groups has {len(keys)} entries for {n} samples")
    out: Dict[object, List[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return list(out.values())


def split_instance(
    scores: torch.Tensor, groups=None, mode: str = "median", q: float = 0.25
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split samples into D⁺/D⁻ by an instance reward, within each group (prompt) or the batch. **[R]**

    ``mode="median"``: D⁺ = scores strictly above the group median, D⁻ = strictly below (ties at the
    median are dropped; with distinct scores an even group splits in halves, an odd one drops its middle).
    ``mode="quantile"``: k = max(1, ⌊q·n⌋); D⁺ = scores ≥ the k-th largest, D⁻ = scores ≤ the k-th
    smallest; a group where these overlap (too many ties) contributes nothing.
    NaN scores are ignored; zero-variance groups contribute nothing. Returns sorted index tensors.
    """
    if mode not in SPLIT_MODES:
        raise ConfigError(f"unknown DRAGON split mode {mode!r}; valid: {choices(SPLIT_MODES)}")
    if mode == "quantile" and not 0.0 < q <= 0.5:
        raise ConfigError(f"DRAGON split quantile q must be in (0, 0.5], got {q}")
    s = torch.as_tensor(scores).detach().double().reshape(-1).cpu()
    pos: List[int] = []
    neg: List[int] = []
    for members in _group_lists(s.shape[0], groups):
        idx = torch.tensor([i for i in members if not torch.isnan(s[i])], dtype=torch.long)
        if idx.numel() < 2:
            continue
        vals = s[idx]
        if mode == "median":
            sv = torch.sort(vals).values
            n = sv.numel()
            med = sv[n // 2] if n % 2 else 0.5 * (sv[n // 2 - 1] + sv[n // 2])
            pos += idx[vals > med].tolist()
            neg += idx[vals < med].tolist()
        else:
            k = max(1, int(q * idx.numel()))
            hi = torch.topk(vals, k).values.min()
            lo = torch.topk(vals, k, largest=False).values.max()
            if hi <= lo:
                continue
            pos += idx[vals >= hi].tolist()
            neg += idx[vals <= lo].tolist()
    return torch.tensor(sorted(pos), dtype=torch.long), torch.tensor(sorted(neg), dtype=torch.long)


def leave_one_out_contributions(set_value: Callable[[torch.Tensor], float], n: int) -> torch.Tensor:
    """c_i = R(D) − R(D \\ {i}) for a set reward R (higher is better), by n + 1 calls of ``set_value``
    (which takes an index tensor into the batch). Positive c_i: sample i raises the set reward."""
    full = torch.arange(n)
    total = float(set_value(full))
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        out[i] = total - float(set_value(torch.cat([full[:i], full[i + 1 :]])))
    return out


def split_by_contribution(
    contributions: torch.Tensor,
    set_value: Optional[Callable[[torch.Tensor], float]] = None,
    mode: str = "median",
    q: float = 0.25,
    min_size: int = 1,
    strict: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """D⁺/D⁻ for a set reward, by ranking samples on their (leave-one-out) contribution. **[R]**

    Start from :func:`split_instance` on ``contributions`` (batch-wide). If ``set_value`` (R of an index
    set, higher is better) is given, verify R(D⁺) > R(D⁻); while it fails, greedily drop the
    lowest-contribution member of D⁺ and the highest-contribution member of D⁻ (keeping the sets the same
    size, since set statistics such as FD are biased by set size) until it holds or a set would shrink
    below ``min_size``. If it never holds: empty sets when ``strict`` (the caller skips the step),
    otherwise the last attempt.
    """
    c = torch.as_tensor(contributions).detach().double().reshape(-1).cpu()
    pos, neg = split_instance(c, None, mode=mode, q=q)
    if set_value is None or pos.numel() == 0 or neg.numel() == 0:
        return pos, neg
    pos = pos[torch.argsort(c[pos], descending=True, stable=True)]  # best first
    neg = neg[torch.argsort(c[neg], stable=True)]  # worst first
    size = min(pos.numel(), neg.numel())
    pos, neg = pos[:size], neg[:size]
    while True:
        if float(set_value(pos)) > float(set_value(neg)):
            return torch.sort(pos).values, torch.sort(neg).values
        if size - 1 < min_size:
            break
        size -= 1
        pos, neg = pos[:size], neg[:size]
    if strict:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone()
    return torch.sort(pos).values, torch.sort(neg).values


def make_pairs(
    pos_idx: torch.Tensor, neg_idx: torch.Tensor, groups=None, cross_group: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Winner/loser index pairs for Diffusion-DPO, within a prompt group where possible.

    Within each group, positives and negatives (in the given order) are zipped; leftovers are then zipped
    across groups when ``cross_group`` (a DPO pair of different prompts keeps each sample's own
    conditioning), else dropped. Each index is used at most once. Returns (winners, losers).
    """
    pos_l = torch.as_tensor(pos_idx, dtype=torch.long).reshape(-1).tolist()
    neg_l = torch.as_tensor(neg_idx, dtype=torch.long).reshape(-1).tolist()
    if groups is None:
        key = {i: 0 for i in pos_l + neg_l}
    else:
        keys = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
        key = {i: keys[i] for i in pos_l + neg_l}
    winners: List[int] = []
    losers: List[int] = []
    left_pos: List[int] = []
    used_neg = set()
    by_group: Dict[object, List[int]] = {}
    for j in neg_l:
        by_group.setdefault(key[j], []).append(j)
    for i in pos_l:
        bucket = by_group.get(key[i])
        if bucket:
            j = bucket.pop(0)
            winners.append(i)
            losers.append(j)
            used_neg.add(j)
        else:
            left_pos.append(i)
    if cross_group:
        left_neg = [j for j in neg_l if j not in used_neg]
        for i, j in zip(left_pos, left_neg):
            winners.append(i)
            losers.append(j)
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)
