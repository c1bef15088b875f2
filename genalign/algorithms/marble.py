"""MARBLE (METHODS.md §5) as genalign algorithms: the min-norm balancing of :mod:`genalign.losses.min_norm` on
DiffusionNFT (amortised, ``marble``) and on GRPO (``marble_grpo``)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple  # noqa: F401

import torch

from genalign.errors import ConfigError, GenalignError, choices  # noqa: F401
from genalign.losses.min_norm import (  # noqa: F401  (the pure parts, re-exported)
    GradList,
    AllReduce,
    MIN_NORM_METHODS,
    SMOOTHER_INITS,
    min_norm_objective,
    _closed_form_2,
    _frank_wolfe,
    _kkt_on_support,
    _polish,
    _enumerate_supports,
    _qp_solver,
    min_norm_coefficients,
    _as_param_lists,
    _raw_gram,
    gram_matrix,
    combine,
    cosines_to_direction,
    normalized_to_loss_weights,
    CoefficientSmoother,
    per_reward_optimality,
    mix_optimality,
)

from dataclasses import dataclass, field


import numpy as np

from genalign.algorithms.advantages import group_advantages
from genalign.algorithms.nft import NFT
from genalign.registry import ALGORITHMS

BALANCES = ("min_norm", "fixed")
LOSS_WEIGHTS = ("normalized", "alpha")


def _check_balancing_options(alg) -> None:
    """Validation shared by Marble and MarbleGRPO (refresh period, smoother, QP method, loss weights)."""
    if alg.period < 1:
        raise ConfigError(f"'algorithm.period' must be >= 1, got {alg.period}")
    if not 0.0 <= alg.rho < 1.0:
        raise ConfigError(f"'algorithm.rho' must be in [0, 1), got {alg.rho}")
    if alg.smoother_init not in SMOOTHER_INITS:
        raise ConfigError(f"'algorithm.smoother_init' is '{alg.smoother_init}'; valid choices: "
                          f"{choices(SMOOTHER_INITS)}")
    if alg.min_norm not in MIN_NORM_METHODS:
        raise ConfigError(f"'algorithm.min_norm' is '{alg.min_norm}'; valid choices: {choices(MIN_NORM_METHODS)}")
    if alg.loss_weights not in LOSS_WEIGHTS:
        raise ConfigError(f"'algorithm.loss_weights' is '{alg.loss_weights}'; valid choices: "
                          f"{choices(LOSS_WEIGHTS)}")


def _balance_step(alg, grads, stats_acc: Dict[str, list], all_reduce: AllReduce = None,
                  fixed: Optional[torch.Tensor] = None) -> list:
    """The refresh shared by Marble and MarbleGRPO: K per-reward gradients → normalised Gram → α* (QP) → smoothed
    ᾱ → loss weights w (stored in ``alg._w``) → the direction Σ_k w_k g_k (returned, per parameter), with its
    per-reward cosines. ``fixed`` weights replace the QP's (the equal-weight baseline). Logs the ``marble/*``
    statistics, including the cosine floor of the un-smoothed QP direction."""
    gram, norms = gram_matrix(grads, normalize=True, all_reduce=all_reduce)
    alpha_star = min_norm_coefficients(gram, alg.min_norm, iters=alg.fw_iters)
    if fixed is None:
        abar = alg._smoother.update(alpha_star)
        w = normalized_to_loss_weights(abar, norms) if alg.loss_weights == "normalized" else abar
    else:
        abar, w = fixed.clone(), fixed.clone()
    alg._w = w.double().cpu()
    direction = combine(grads, alg._w)
    cos = cosines_to_direction(grads, direction, all_reduce=all_reduce)
    names = alg._names
    for k, name in enumerate(names):
        stats_acc.setdefault(f"marble/alpha_{name}", []).append(float(abar[k]))
        stats_acc.setdefault(f"marble/alpha_star_{name}", []).append(float(alpha_star[k]))
        stats_acc.setdefault(f"marble/weight_{name}", []).append(float(alg._w[k]))
        stats_acc.setdefault(f"marble/cos_{name}", []).append(float(cos[k]))
        stats_acc.setdefault(f"marble/grad_norm_{name}", []).append(float(norms[k]))
        for l in range(k + 1, len(names)):
            stats_acc.setdefault(f"marble/gram_{k}{l}", []).append(float(gram[k, l]))
    stats_acc.setdefault("marble/min_cos", []).append(float(cos.min()))
    # the un-smoothed QP direction d* = Σ α*_k ĝ_k: cos(g_k, d*) = (Mα*)_k / √(α*ᵀMα*) ≥ √(α*ᵀMα*) ≥ 0
    a_s = alpha_star.double().cpu()
    m = gram.double().cpu()
    q = float(a_s @ m @ a_s)
    if q > 0:
        stats_acc.setdefault("marble/min_cos_qp", []).append(float((m @ a_s).min() / q**0.5))
    stats_acc.setdefault("marble/refresh", []).append(1.0)
    return direction


@ALGORITHMS.register("marble")
@dataclass
class Marble(NFT):
    """MARBLE (arXiv 2605.06507; METHODS.md §5) on DiffusionNFT, amortised.

    Advantages are per reward, (N, K): reward k's own group z-score (NaN → 0 → r = ½, neutral). Every
    ``period`` optimiser steps (a *refresh*), one forward per backward unit and K vector-Jacobian products give
    the per-reward gradients g_k = ∇L_NFT(θ; r_k) (synchronised across processes); their normalised Gram matrix
    gives α* = argmin_Δ αᵀMα, smoothed as ᾱ ← ρᾱ + (1−ρ)α*; the step applies Σ_k w_k g_k with w = ᾱ folded
    into loss weights (``loss_weights="normalized"``: w_k ∝ ᾱ_k/‖g_k‖, [R]/uncertain) — equal to ∇L(r_mix)
    because L_NFT is affine in r. Other steps run one pass with r_mix = Σ_k w_k r_k. Logged on refreshes:
    ``marble/alpha_<reward>``, ``marble/weight_<reward>``, ``marble/cos_<reward>`` (cosine of g_k with the applied
    direction), ``marble/min_cos``, ``marble/gram_<k><l>``.

    ``balance="fixed"`` is the equal-weight baseline with the same diagnostics: w = the rewards' config weights
    normalised onto the simplex, never updated (r_mix = the weighted mean of the per-reward r's), and per-reward
    gradients are still computed every ``period`` steps for the cosine logs.
    ``period`` M = 10 and ``rho`` ρ = 0.9 are genalign placeholders (no published values; uncertain).

    ``refresh_fraction`` f < 1 (a genalign option, not from the paper): the per-reward gradients of a refresh are
    estimated on a random f-share of each micro-batch (only their normalised Gram matrix and norms are used), then
    the step itself is one ordinary pass with r_mix on the whole batch under the new weights. A refresh then costs
    f·(F + K·B) + (F + B) instead of F + K·B, which is what keeps K = 3 near the single-reward cost. f = 1 (default)
    is the exact form above: the refresh step applies Σ_k w_k g_k from the full batch.
    """

    beta: float = field(default=0.1, metadata={"help": "NFT β (0.1 for multi-reward in DiffusionNFT)."})
    period: int = field(default=10, metadata={"help": "M: recompute the per-reward gradients every M steps [uncertain]."})
    rho: float = field(default=0.9, metadata={"help": "ρ: EMA of the QP solution [uncertain]."})
    smoother_init: str = field(default="first", metadata={"help": "Smoother start: first (ᾱ = first α*) | uniform."})
    min_norm: str = field(default="auto", metadata={"help": "QP solver: auto | closed_form | frank_wolfe | enumerate | qp."})
    fw_iters: int = field(default=50, metadata={"help": "Frank–Wolfe iterations (K > 2)."})
    loss_weights: str = field(default="normalized", metadata={"help": "normalized (w ∝ ᾱ/‖g‖) | alpha (w = ᾱ) [uncertain]."})
    balance: str = field(default="min_norm", metadata={"help": "min_norm (MARBLE) | fixed (equal-weight baseline)."})
    sharded_gradients: bool = field(default=False, metadata={"help": "FSDP/ZeRO shards: sum the Gram matrix over ranks."})
    refresh_fraction: float = field(default=1.0, metadata={"help": "Share of each micro-batch used to estimate the per-reward gradients on a refresh (1 = exact)."})

    def __post_init__(self):
        super().__post_init__()
        _check_balancing_options(self)
        if not 0.0 < self.refresh_fraction <= 1.0:
            raise ConfigError(f"'algorithm.refresh_fraction' must be in (0, 1], got {self.refresh_fraction}")
        if self.balance not in BALANCES:
            raise ConfigError(f"'algorithm.balance' is '{self.balance}'; valid choices: {choices(BALANCES)}")
        self._smoother: Optional[CoefficientSmoother] = None
        self._w: Optional[torch.Tensor] = None
        self._steps = 0  # optimiser steps taken by this algorithm (the refresh clock)

    def setup(self, view) -> None:
        super().setup(view)
        k = len(view.rewards)
        self._names = list(view.reward_names)
        self._smoother = CoefficientSmoother(k, self.period, self.rho, self.smoother_init)
        w = torch.tensor([max(float(r.weight), 0.0) for r in view.rewards], dtype=torch.float64)
        self._fixed = w / w.sum() if w.sum() > 0 else torch.full((k,), 1.0 / k, dtype=torch.float64)
        self._w = self._fixed.clone()

    # -------------------------------------------------------------------------------- advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        self._restore()
        cols, zs = [], []
        for k in range(per_reward.shape[1]):
            a, st = group_advantages(per_reward[:, k], group_ids, std=self.adv_std, eps=self.adv_eps,
                                     clip=self.adv_clip_max)
            cols.append(a)
            zs.append(st["zero_std_ratio"])
        adv = torch.stack(cols, 1)  # (N, K); NaN rewards already gave A = 0
        return adv, {"zero_std_ratio": float(np.mean(zs))}, torch.ones(adv.shape[0], dtype=torch.bool)

    # -------------------------------------------------------------------------------- update
    def objectives(self, view) -> int:
        """Called once per optimiser step: K on a refresh (every ``period`` steps), else 1 (one mixed pass)."""
        k = len(self._names) if self._steps % self.period == 0 else 1
        self._steps += 1
        return k

    @property
    def probe_fraction(self) -> float:
        return self.refresh_fraction

    def optimality(self, adv: torch.Tensor, probe: bool) -> List[torch.Tensor]:
        if adv.ndim != 2 or adv.shape[1] != len(self._names):
            raise GenalignError(f"MARBLE needs (N, {len(self._names)}) per-reward advantages, got {tuple(adv.shape)}")
        r_all = per_reward_optimality(adv.T, self.adv_clip_max)  # (K, n)
        return list(r_all) if probe else [mix_optimality(r_all, self._w)]

    def combine(self, view, grads, stats):
        """Gram → α* → smoothed weights; the exact refresh applies Σ_k w_k g_k, a ``refresh_fraction`` < 1 one
        returns None so that the step is an ordinary r_mix pass on the whole batch under the new weights."""
        hook = view.sum_hook() if self.sharded_gradients else None
        direction = _balance_step(self, grads, stats, hook, None if self.balance == "min_norm" else self._fixed)
        return direction if self.refresh_fraction >= 1.0 else None

    def after_iteration(self, view) -> Dict[str, float]:
        out = super().after_iteration(view)
        for k, name in enumerate(self._names):
            out[f"marble/mix_{name}"] = float(self._w[k])
        return out

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        sd = super().state_dict()
        sd.update({f"smoother.{k}": v for k, v in self._smoother.state_dict().items()})
        sd["mix_weights"] = self._w.clone()
        sd["steps"] = torch.tensor(self._steps)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        super().load_state_dict({k: v for k, v in sd.items() if not k.startswith("smoother.")})
        self._smoother.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("smoother.")})
        if "mix_weights" in sd:
            self._w = sd["mix_weights"].double().clone()
        self._steps = int(sd.get("steps", torch.tensor(0)))


from genalign.algorithms.grpo import GRPO


@ALGORITHMS.register("marble_grpo")
@dataclass
class MarbleGRPO(GRPO):
    """MARBLE's min-norm balancing on Flow-GRPO / Diffusion GRPO (genalign extension; METHODS.md §5 describes it on
    NFT only). Per-reward group advantages (N, K); on a refresh step (every ``period`` optimiser steps) the K
    per-reward PPO-clip gradients are computed by K accumulation passes (DDP-synchronised), the normalised Gram
    matrix gives α*, smoothed by ρ, and the step applies Σ_k w_k g_k (w ∝ ᾱ_k/‖g_k‖ with
    ``loss_weights="normalized"``). The PPO-clip loss is not affine in A, so the other steps use the mixed
    advantage A_mix = Σ_k w_k A_k in one pass — an approximation of Σ_k w_k ∇L(A_k) ([R]); ``period: 1`` makes
    every step exact at K× the backward cost. Logs as :class:`Marble` does.
    """

    period: int = field(default=1, metadata={"help": "Per-reward passes every M steps (1 = every step, exact)."})
    rho: float = field(default=0.9, metadata={"help": "ρ: EMA of the QP solution [uncertain]."})
    smoother_init: str = field(default="first", metadata={"help": "Smoother start: first | uniform."})
    min_norm: str = field(default="auto", metadata={"help": "QP solver: auto | closed_form | frank_wolfe | enumerate | qp."})
    fw_iters: int = field(default=50, metadata={"help": "Frank–Wolfe iterations (K > 2)."})
    loss_weights: str = field(default="normalized", metadata={"help": "normalized (w ∝ ᾱ/‖g‖) | alpha [uncertain]."})

    def __post_init__(self):
        super().__post_init__()
        _check_balancing_options(self)
        if self.adv_std == "buffer" or self.drop_zero_std_groups or self.best_of_n:
            raise ConfigError("marble_grpo supports adv_std global | group | batch, without drop_zero_std_groups "
                              "or best_of_n")
        self._steps = 0

    def setup(self, view) -> None:
        super().setup(view)
        k = len(view.rewards)
        self._names = list(view.reward_names)
        self._smoother = CoefficientSmoother(k, self.period, self.rho, self.smoother_init)
        self._w = torch.full((k,), 1.0 / k, dtype=torch.float64)

    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        cols = [group_advantages(per_reward[:, k], group_ids, std=self.adv_std, eps=self.adv_eps,
                                 clip=self.adv_clip_max, unbiased=self.adv_unbiased_std)[0]
                for k in range(per_reward.shape[1])]
        adv = torch.stack(cols, 1)
        return adv, {"zero_std_ratio": 0.0}, torch.ones(adv.shape[0], dtype=torch.bool)

    def objectives(self, view) -> int:
        """Called once per optimiser step: K per-reward gradients on a refresh step, else one mixed pass."""
        k = len(self._names) if self._steps % self.period == 0 else 1
        self._steps += 1
        return k

    def mix(self, adv: torch.Tensor) -> torch.Tensor:
        return (adv.double() * self._w.unsqueeze(0)).sum(1).float()

    def combine(self, view, grads, stats):
        return _balance_step(self, grads, stats)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        sd = {f"smoother.{k}": v for k, v in self._smoother.state_dict().items()}
        sd["mix_weights"] = self._w.clone()
        sd["steps"] = torch.tensor(self._steps)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if any(k.startswith("smoother.") for k in sd):
            self._smoother.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("smoother.")})
        if "mix_weights" in sd:
            self._w = sd["mix_weights"].double().clone()
        self._steps = int(sd.get("steps", torch.tensor(0)))
