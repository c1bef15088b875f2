"""GRPO for diffusion and flow models: Flow-GRPO (Liu et al., arXiv 2505.05470), Diffusion GRPO / DDPO
(Black et al., arXiv 2305.13301) and DanceGRPO options (Xue et al., arXiv 2505.07818). METHODS.md §3.

Per trajectory i and trained step j:
  r_ij = exp(log π_θ(x_{j+1}|x_j) − log π_old(x_{j+1}|x_j))
  L_clip = mean_ij max(−A_i r_ij, −A_i clip(r_ij, 1−ε, 1+ε))                    (PPO-clip, §3.2)
  KL_j   = mean_d (μ_θ − μ_ref)² / (2 s_t²)     [kl_form="flow_grpo": the code form = exact KL × |dt|]
         = mean_d (μ_θ − μ_ref)² / (2 s_t² |dt|) [kl_form="exact"]                 (§3.3)
  L = L_clip + β·KL, with μ_ref from the same network with the LoRA adapter disabled.

GRPO-Guard (``guard=True``, §3.6): r̃ = exp(s·(log π_θ − log π_old + mean_d δ²/(2s²))), δ = μ_θ − μ_old,
s = the transition std, and the clipped loss is divided by |dt|.

``kl_steps="all"`` (this project's option, not in the papers): the KL also anchors every step that no sample of the
batch trains on (all but the last step; e.g. the deterministic steps after a ``train_timesteps: window``), on the
states the rollout visited there, with the std the stochastic kernel would have at that step; steps whose std is 0
are skipped. Why: with a window only the window's steps carry the loss, yet the network is shared across noise
levels, so the updates spill over into the untrained (low-noise) steps with nothing holding them; on the tones
world that drift costs correctness and FAD (README "Tones world").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..registry import ALGORITHMS
from .advantages import PerPromptStatTracker, aggregate_rewards, combined_advantages
from ..losses.ppo import mean_kl, ppo_clip_loss  # noqa: F401  (re-exported)
from .base import Algorithm


@ALGORITHMS.register("grpo")
@dataclass
class GRPO(Algorithm):
    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip ε (stated for mean-reduced log-probs)."})
    clip_range_low: Optional[float] = field(default=None, metadata={"help": "Asymmetric lower clip (else ε)."})
    clip_range_high: Optional[float] = field(default=None, metadata={"help": "Asymmetric upper clip (else ε)."})
    beta: float = field(default=0.0, metadata={"help": "KL weight to the reference (adapter disabled)."})
    kl_form: str = field(default="flow_grpo", metadata={"help": "flow_grpo (code form, ×|dt|) | exact."})
    adv_std: str = field(default="global", metadata={"help": "Advantage std over: global | group | batch | buffer."})
    adv_eps: float = field(default=1e-4, metadata={"help": "Epsilon added to the std."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "Advantages clipped to ±A_max."})
    adv_unbiased_std: bool = field(default=False, metadata={"help": "Unbiased std (DanceGRPO) vs population."})
    drop_zero_std_groups: bool = field(default=False, metadata={
        "help": "Leave groups whose rewards are all equal out of the update (loss and KL)."})
    buffer_size: int = field(default=16, metadata={"help": "adv_std=buffer: per-prompt buffer (DDPO)."})
    buffer_min_count: int = field(default=16, metadata={"help": "adv_std=buffer: min rewards before using it."})
    best_of_n: int = field(default=0, metadata={
        "help": "DanceGRPO: train only the top n/2 + bottom n/2 per group (the rest stay out of the update)."})
    guard: bool = field(default=False, metadata={"help": "GRPO-Guard ratio normalisation and 1/|dt| reweighting."})
    kl_steps: str = field(default="trained", metadata={
        "help": "Where the KL applies: trained (the trained steps) | all (also every untrained step but the last)."})
    kl_anchor_beta: Optional[float] = field(default=None, metadata={
        "help": "kl_steps=all: the KL weight on the untrained steps; null = beta."})
    kl_anchor_fraction: float = field(default=1.0, metadata={
        "help": "kl_steps=all: share of each micro-batch the untrained steps' KL is estimated on (every k-th sample)."})

    def __post_init__(self):
        from ..errors import ConfigError, choices

        if self.kl_form not in ("flow_grpo", "exact"):
            raise ConfigError(f"'algorithm.kl_form' is '{self.kl_form}'; valid choices: exact, flow_grpo")
        valid = ("global", "group", "batch", "buffer")
        if self.adv_std not in valid:
            raise ConfigError(f"'algorithm.adv_std' is '{self.adv_std}'; valid choices: {choices(valid)}")
        if self.clip_range <= 0:
            raise ConfigError(f"'algorithm.clip_range' must be > 0, got {self.clip_range}")
        if self.beta < 0:
            raise ConfigError(f"'algorithm.beta' must be >= 0, got {self.beta}")
        if self.kl_steps not in ("trained", "all"):
            raise ConfigError(f"'algorithm.kl_steps' is '{self.kl_steps}'; valid choices: all, trained")
        if not 0.0 < self.kl_anchor_fraction <= 1.0:
            raise ConfigError(f"'algorithm.kl_anchor_fraction' must be in (0, 1], got {self.kl_anchor_fraction}")
        if self.kl_anchor_beta is not None and self.kl_anchor_beta < 0:
            raise ConfigError(f"'algorithm.kl_anchor_beta' must be >= 0 (or null = beta), got {self.kl_anchor_beta}")
        self._tracker = PerPromptStatTracker(self.buffer_size, self.buffer_min_count) if self.adv_std == "buffer" else None

    @property
    def store_means(self) -> bool:  # GRPO-Guard needs μ_old
        return self.guard

    def setup(self, view) -> None:
        self._base_step = view.generator.base_step
        if self.beta > 0:
            view.generator.make_reference()

    # -------------------------------------------------------------------------------- advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        if self._tracker is not None:
            adv = self._tracker.update(prompts, aggregate_rewards(per_reward, weights), self.adv_eps, self.adv_clip_max)
            return adv, {"zero_std_ratio": 0.0}, torch.ones_like(adv, dtype=torch.bool)
        adv, st = combined_advantages(per_reward, weights, group_ids, mode=mode, std=self.adv_std, eps=self.adv_eps,
                                      clip=self.adv_clip_max, unbiased=self.adv_unbiased_std)
        keep = torch.ones_like(adv, dtype=torch.bool)
        if self.drop_zero_std_groups:
            keep &= ~st["_zero_mask"]
        if self.best_of_n > 0:
            keep &= best_of_n_mask(adv, group_ids, self.best_of_n)
        return adv, {"zero_std_ratio": st["zero_std_ratio"], "group_std": st["group_std"]}, keep

    # -------------------------------------------------------------------------------- loss
    def units(self, batch, items) -> int:
        return int(batch.rollout.train_steps.shape[1]) + len(self.anchor_steps(batch.rollout))

    def anchor_steps(self, ro) -> list:
        """The untrained steps the KL also anchors (``kl_steps="all"``): those no sample of the batch trains on,
        all but the last; the same on every micro-batch of the batch."""
        if self.beta <= 0 or self.kl_steps != "all":
            return []
        trained = set(torch.unique(ro.train_steps).tolist())
        T = ro.log_probs.shape[1]
        base_step = getattr(self, "_base_step", None)  # model.base_from: the base's steps are not the policy's
        end = min(T - 1, base_step(T) if base_step is not None else T)
        return [j for j in range(end) if j not in trained]

    def mix(self, adv: torch.Tensor) -> torch.Tensor:
        """The advantage a plain step trains on (MARBLE-GRPO mixes per-reward columns)."""
        return adv

    def losses(self, view, batch, items):
        """One unit per trained step. With ``view.probe`` (multi-objective steps) each unit yields the list of the
        per-column losses of (N, K) advantages from one forward."""
        mb, adv = self.minibatch(batch, items)
        gen, scfg = view.generator, view.cfg.sampler
        probe = getattr(view, "probe", False)
        cols = [adv[:, k] for k in range(adv.shape[1])] if probe else [self.mix(adv)]
        lo = self.clip_range_low if self.clip_range_low is not None else self.clip_range
        hi = self.clip_range_high if self.clip_range_high is not None else self.clip_range
        ar = torch.arange(len(mb))
        for k in range(mb.train_steps.shape[1]):
            j = mb.train_steps[:, k]
            lp, mu, std = view.step_log_prob(mb, j, detach_uncond=scfg.detach_uncond)
            old_lp = mb.log_probs[ar, j].to(lp.device)
            log_ratio = lp - old_lp
            if self.guard:
                mu_old = mb.means[ar, j].to(mu.device)
                d2 = ((mu - mu_old) ** 2).flatten(1).mean(1).detach()
                s = std.to(lp.device)
                ratio = torch.exp(s * (log_ratio + d2 / (2 * s**2)))
            else:
                ratio = torch.exp(log_ratio)
            dt = gen.law.step_dt(mb.schedule, j).to(lp.device)  # 1 for VP: the 1/|dt| and ×|dt| below are no-ops
            out = []
            for a in cols:
                per_sample = ppo_clip_loss(ratio, a.to(lp.device), lo, hi)
                if self.guard:
                    per_sample = per_sample / dt
                out.append(per_sample.mean())
            stats = {
                "clipfrac": float(((ratio - 1).abs() > self.clip_range).float().mean()),
                "approx_kl": float(0.5 * (log_ratio.detach() ** 2).mean()),
                "ratio": float(ratio.detach().mean()),
                "policy_loss": float(out[0].detach()),
            }
            if self.beta > 0:
                kl = self._kl_to_reference(view, mb, j, mu, std.to(mu.device), dt)
                out = [o + self.beta * kl for o in out]
                stats["kl"] = float(kl.detach())
            else:
                stats["kl"] = 0.0
            yield (out if probe else out[0]), stats
        anchors = self.anchor_steps(batch.rollout)
        if anchors and self.kl_anchor_fraction < 1.0:  # a deterministic subsample: every k-th sample
            mb = mb.index(range(0, len(mb), max(1, round(1.0 / self.kl_anchor_fraction))))
        for j in anchors:  # KL-only units on the untrained steps (kl_steps="all")
            jj = torch.full((len(mb),), j, dtype=torch.long)
            _, mu, std = view.step_log_prob(mb, jj, detach_uncond=scfg.detach_uncond)
            std = std.to(mu.device)
            if not bool((std > 0).all()):
                kl = mu.sum() * 0.0  # a deterministic kernel step: no KL is defined there
            else:
                kl = self._kl_to_reference(view, mb, jj, mu, std, gen.law.step_dt(mb.schedule, jj).to(mu.device))
            loss = (self.beta if self.kl_anchor_beta is None else self.kl_anchor_beta) * kl
            yield ([loss] * len(cols) if probe else loss), {"kl_anchor": float(kl.detach())}

    def _kl_to_reference(self, view, mb, j, mu, std, dt) -> torch.Tensor:
        """Mean over the micro-batch of the step-j transition KL between the policy (mean ``mu``) and the reference."""
        with view.reference() as ref:
            _, mu_ref, _ = view.step_log_prob(mb, j, model=ref)
        return mean_kl(mu, mu_ref, std, dt, self.kl_form).mean()

    def state_dict(self):
        return {}


def best_of_n_mask(adv: torch.Tensor, group_ids: torch.Tensor, n: int) -> torch.Tensor:
    """DanceGRPO best-of-n: keep the n/2 highest and n/2 lowest advantages of each group."""
    keep = torch.zeros_like(adv, dtype=torch.bool)
    half = max(n // 2, 1)
    for g in torch.unique(group_ids):
        idx = torch.nonzero(group_ids == g).flatten()
        order = idx[torch.argsort(adv[idx])]
        keep[order[:half]] = True
        keep[order[-half:]] = True
    return keep
