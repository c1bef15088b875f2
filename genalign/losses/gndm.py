"""R_dm / GNDM / GNDMR — a **reconstruction** [R] (METHODS.md §10).

Source: "R_dm: Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation", arXiv
2603.28460. No public code: only the abstract's statements are known (DMD recast as a reward R_dm; RL group
normalisation "GNDM"; adaptive weighting with external rewards "GNDMR"; importance sampling "IS"). Everything
below is genalign's reading of them, kept behind named options; none of it is the paper's verified procedure.

Primary reading (``estimator="policy_gradient"``):
  R_dm(x) = w(t)·[mean‖pred_fake(x_t, t) − target‖² − mean‖pred_real(x_t, t) − target‖²]
          ≈ log p_real(x) − log p_fake(x) + c(t)                     (ELBO difference; ε- or v-errors)
  Â_i = (R_dm,i − mean_G R_dm)/(std_G R_dm + δ) over the G samples of a prompt that share (t, ε) draws: the group
  mean cancels c(t) and the scale of w(t). The update is GRPO/PPO on the stochastic CPS steps; "IS" is read as PPO
  ratios that let one rollout serve several updates (:func:`ppo_ratio`, :func:`ppo_clip_loss`).
  GNDMR: A_i = Σ_k w_k·Â_{k,i} with R_dm one member; w_k from :class:`GNDMRWeights` (fixed | inverse_std | external).
Alternative (``estimator="pathwise"``): DMD's pathwise gradient with a group-mean normaliser
(:func:`gndm_pathwise_gradient`); never subtract the group-mean *vector* from g (biased).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from genalign.algorithms import conversions as cv
from genalign.algorithms.advantages import group_advantages
from genalign.errors import ConfigError, choices

from .dmd import _check_same_shape

GNDM_ESTIMATORS = ("policy_gradient", "pathwise")
GNDMR_WEIGHT_MODES = ("fixed", "inverse_std", "external")


def check_gndm_estimator(name: str) -> str:
    """Validate the [R] estimator flag: ``policy_gradient`` (primary reading) or ``pathwise`` (alternative)."""
    if name not in GNDM_ESTIMATORS:
        raise ConfigError(f"unknown GNDM estimator {name!r}; valid: {choices(GNDM_ESTIMATORS)}")
    return name


def dm_reward(
    pred_fake: torch.Tensor, pred_real: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """[R] Per-sample R_dm = w·[mean_d (pred_fake − target)² − mean_d (pred_real − target)²], shape (N,), no grad.

    Both predictions at the same (x_t, t) built from the same (t, ε); ``target`` is ε (ε-models) or v = ε − x0
    (flow) from the adapter's noise law; the real prediction is the teacher's with its CFG. ``weight`` (N,) = w(t).
    A sample the fake score explains better than the teacher (small fake error) gets a low reward."""
    _check_same_shape(pred_fake=pred_fake, pred_real=pred_real, target=target)
    with torch.no_grad():
        tgt = cv.as_float(target)
        err_fake = ((cv.as_float(pred_fake) - tgt) ** 2).flatten(1).mean(1)
        err_real = ((cv.as_float(pred_real) - tgt) ** 2).flatten(1).mean(1)
        r = err_fake - err_real
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=r.dtype, device=r.device)
            if weight.shape != r.shape:
                raise ValueError(f"weight must have shape {tuple(r.shape)}, got {tuple(weight.shape)}")
            r = r * weight
    return r


def group_shared_draws(
    group_ids: torch.Tensor, sample_shape: Sequence[int], generator: Optional[torch.Generator] = None,
    t_min: float = 0.02, t_max: float = 0.98,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """[R] One (t, ε) draw per group, copied to every sample of that group: returns t (N,) ~ U[t_min, t_max]
    (flow σ or a fraction of T) and ε (N, *sample_shape). Sharing the draws is what lets the group mean cancel c(t).
    Groups are drawn in sorted-id order, so the result depends only on the ids and the generator. CPU tensors
    (a CPU generator is identical on every rank); move them to the model's device."""
    uniq, inverse = torch.unique(group_ids.cpu(), return_inverse=True)  # CPU, like the generator
    t_g = t_min + (t_max - t_min) * torch.rand(len(uniq), generator=generator)
    eps_g = torch.randn(len(uniq), *sample_shape, generator=generator)
    return t_g[inverse], eps_g[inverse]


def group_normalise(
    rewards: torch.Tensor, group_ids: torch.Tensor, delta: float = 1e-4, unbiased: bool = False,
    clip: Optional[float] = None,
) -> torch.Tensor:
    """GNDM Â_i = (R_i − mean_G R)/(std_G R + δ) within each prompt group (population std unless ``unbiased``);
    groups of one sample or with equal rewards get 0; optional clip to ±clip."""
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be (N,), got {tuple(rewards.shape)}, "
                         f"{tuple(group_ids.shape)}")
    adv, _ = group_advantages(rewards, group_ids, std="group", eps=delta, clip=float("inf") if clip is None else clip,
                              unbiased=unbiased)
    return adv


# ------------------------------------------------------------------------------------ IS / PPO ratios
def ppo_ratio(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """[R] "IS" read as PPO importance ratios r = exp(log π_θ − log π_old) so a rollout can be reused."""
    _check_same_shape(logp_new=logp_new, logp_old=logp_old)
    return torch.exp(cv.as_float(logp_new) - cv.as_float(logp_old).detach())


def ppo_clip_loss(
    ratio: torch.Tensor, adv: torch.Tensor, clip_range: float = 1e-4, clip_range_high: Optional[float] = None
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """mean max(−A·r, −A·clip(r, 1−ε, 1+ε_high)) (PPO, Schulman et al. 2017 Eq. 7; METHODS §3.2) with
    ``clipfrac`` = mean(|r − 1| > ε) and ``approx_kl`` = ½·mean(log r)²."""
    _check_same_shape(ratio=ratio, adv=adv)
    hi = clip_range if clip_range_high is None else clip_range_high
    adv = cv.as_float(adv).detach()
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_range, 1 + hi)).mean()
    with torch.no_grad():
        stats = {"clipfrac": float(((ratio - 1).abs() > clip_range).float().mean()),
                 "approx_kl": float(0.5 * torch.log(ratio).pow(2).mean())}
    return loss, stats


# --------------------------------------------------------------------------------------- GNDMR weights
class GNDMRWeights:
    """[R] GNDMR reward weights w_k for A_i = Σ_k w_k·Â_{k,i}; the paper's adaptive rule is unknown, so:

    * ``fixed``: w = ``base_weights``;
    * ``inverse_std``: w_k = base_k / (running_std_k + eps), rescaled so Σ w = Σ base. running_std_k is an EMA
      (``momentum``) of the batch std of column k of whatever :meth:`update` is fed — raw rewards to equalise their
      scales (e.g. R_dm, whose scale follows w(t), against a CLIP score); the first update initialises it;
    * ``external``: w = the ``alpha`` given to :meth:`weights` (e.g. MARBLE's min-norm α), validated.
    State is tensors only (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, num_rewards: int, mode: str = "fixed", base_weights: Optional[Sequence[float]] = None,
                 momentum: float = 0.9, eps: float = 1e-8):
        if mode not in GNDMR_WEIGHT_MODES:
            raise ConfigError(f"unknown GNDMR weight mode {mode!r}; valid: {choices(GNDMR_WEIGHT_MODES)}")
        if num_rewards < 1:
            raise ValueError(f"num_rewards must be >= 1, got {num_rewards}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        base = [1.0] * num_rewards if base_weights is None else list(base_weights)
        if len(base) != num_rewards:
            raise ValueError(f"base_weights has {len(base)} entries for {num_rewards} rewards")
        self.num_rewards, self.mode, self.momentum, self.eps = num_rewards, mode, momentum, eps
        self.base = torch.tensor(base, dtype=torch.float64)
        self.running_var = torch.ones(num_rewards, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.long)

    def update(self, per_reward: torch.Tensor) -> None:
        """Fold a batch (N, K) into the running variance (NaN entries ignored; a column without two finite values
        keeps its state)."""
        if per_reward.ndim != 2 or per_reward.shape[1] != self.num_rewards:
            raise ValueError(f"per_reward must be (N, {self.num_rewards}), got {tuple(per_reward.shape)}")
        r = per_reward.detach().double().cpu()
        new = self.running_var.clone()
        for k in range(self.num_rewards):
            col = r[:, k][torch.isfinite(r[:, k])]
            if col.numel() < 2:
                continue
            v = col.var(unbiased=False)
            new[k] = v if int(self.count) == 0 else self.momentum * self.running_var[k] + (1 - self.momentum) * v
        self.running_var, self.count = new, self.count + 1

    def weights(self, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The current (K,) weights (float64)."""
        if self.mode == "external":
            if alpha is None:
                raise ValueError("GNDMR weight mode 'external' needs alpha")
            a = torch.as_tensor(alpha, dtype=torch.float64).flatten()
            if a.shape != (self.num_rewards,) or torch.any(a < 0) or not torch.all(torch.isfinite(a)):
                raise ValueError(f"alpha must be {self.num_rewards} finite non-negative weights, got {a.tolist()}")
            return a
        if self.mode == "fixed":
            return self.base.clone()
        w = self.base / (self.running_var.sqrt() + self.eps)
        return w * self.base.sum() / w.sum()

    def combine(self, advantages: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A_i = Σ_k w_k·Â_{k,i} from per-reward group-normalised advantages (N, K)."""
        if advantages.ndim != 2 or advantages.shape[1] != self.num_rewards:
            raise ValueError(f"advantages must be (N, {self.num_rewards}), got {tuple(advantages.shape)}")
        return (advantages.double() * self.weights(alpha).to(advantages.device)).sum(1).to(advantages.dtype)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"base": self.base.clone(), "running_var": self.running_var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing = {"base", "running_var", "count"} - set(state)
        if missing:
            raise ValueError(f"GNDMRWeights state is missing {sorted(missing)}")
        if tuple(state["running_var"].shape) != (self.num_rewards,):
            raise ValueError(f"GNDMRWeights state is for {tuple(state['running_var'].shape)} rewards, "
                             f"not {self.num_rewards}")
        self.base = state["base"].double().clone()
        self.running_var = state["running_var"].double().clone()
        self.count = state["count"].long().clone()


# ------------------------------------------------------------------------------ pathwise alternative
def gndm_pathwise_gradient(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, group_ids: torch.Tensor,
    advantages: Optional[torch.Tensor] = None, reweight_scale: float = 0.0, normaliser_eps: float = 0.0,
) -> torch.Tensor:
    """[R] Alternative estimator (``estimator="pathwise"``): DMD's g_i = (x̂0_fake − x̂0_real)_i / n_{g(i)} with the
    **group-mean** normaliser n_G = mean_{j∈G} mean_d|x_j − x̂0_real,j| + eps instead of the per-sample one.

    With ``advantages`` (group-normalised R_dm, (N,)) and ``reweight_scale`` λ > 0, each g_i is multiplied by
    max(0, 1 − λ·Â_i): samples the teacher already prefers (high R_dm) are pushed less. The group-mean *vector*
    is never subtracted from g (that biases the pathwise gradient). Feed the result to ``dmd.surrogate_loss``."""
    _check_same_shape(x=x, x0_real=x0_real, x0_fake=x0_fake)
    if group_ids.shape != x.shape[:1]:
        raise ValueError(f"group_ids must be ({x.shape[0]},), got {tuple(group_ids.shape)}")
    with torch.no_grad():
        xd, real, fake = x.detach().double(), x0_real.detach().double(), x0_fake.detach().double()
        per = (xd - real).abs().flatten(1).mean(1)
        uniq, inv = torch.unique(group_ids.to(per.device), return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=per.dtype, device=per.device).index_add_(0, inv, per)
        counts = torch.zeros(len(uniq), dtype=per.dtype, device=per.device).index_add_(0, inv, torch.ones_like(per))
        norm = (sums / counts)[inv] + normaliser_eps
        scale = 1 / norm
        if reweight_scale:
            if advantages is None or advantages.shape != per.shape:
                raise ValueError(f"reweight_scale > 0 needs advantages of shape {tuple(per.shape)}")
            scale = scale * torch.clamp(1 - reweight_scale * advantages.to(per.device).double(), min=0.0)
        return torch.nan_to_num((fake - real) * scale.reshape(-1, *([1] * (x.ndim - 1))))
