"""DRAGON as a genalign algorithm (METHODS.md §6): the D⁺/D⁻ split of the gathered batch (instance or set
contributions) and the Diffusion-DPO / -KTO surrogates of :mod:`genalign.losses.preference`."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple  # noqa: F401

import torch

from genalign.errors import ConfigError, GenalignError, choices  # noqa: F401
from genalign.losses.preference import (  # noqa: F401  (the pure parts, re-exported)
    SPLIT_MODES,
    prediction_error,
    diffusion_dpo_loss,
    diffusion_kto_loss,
    _group_lists,
    split_instance,
    leave_one_out_contributions,
    split_by_contribution,
    make_pairs,
)

from dataclasses import dataclass, field
from typing import Any, Sequence


from genalign.algorithms.advantages import aggregate_rewards
from genalign.algorithms.base import Algorithm
from genalign.algorithms.nft import TIMESTEP_SAMPLING, training_point
from genalign.registry import ALGORITHMS

LOSSES = ("kto", "dpo")
SPLITS = ("instance", "set")
SPLIT_SCOPES = ("group", "batch")
SET_CONTRIBUTIONS = ("auto", "loo", "given")


@ALGORITHMS.register("dragon")
@dataclass
class Dragon(Algorithm):
    """DRAGON (arXiv 2504.15217; METHODS.md §6): on-policy generations → D⁺/D⁻ → a contrastive surrogate
    against the frozen reference (the adapter-disabled base; a frozen copy for full fine-tuning).

    * Rollouts need no log-probs: deterministic by default (``stochastic_rollout`` for the SDE/DDIM-η sampler).
    * ``split="instance"``: the weighted sum of the rewards per sample, split within each prompt group
      (``split_scope="group"``) or the batch at the median or top/bottom quantile (:func:`split_instance`).
    * ``split="set"``: per-sample contributions c_i = R(D) − R(D∖i) for every ``set``-scope reward — computed
      by leave-one-out on the gathered batch (``set_contribution="loo"``: the reward is evaluated on subsets,
      through its ``set_value`` when it has one, else as the mean of its broadcast scores, e.g. ``digit_fd`` mode
      ``set`` or ``digit_diversity``), or taken from its per-sample scores (``"given"``: rewards that already
      score contributions, e.g. ``fd``/``vendi``/``mmd`` of genalign.rewards.distributional or ``digit_fd``
      mode ``leave_one_out``). ``"auto"``: given for rewards with a ``set_value`` method, loo otherwise.
      Sample-scope rewards contribute their centred scores. Then :func:`split_by_contribution`, greedily
      verifying R(D⁺) > R(D⁻) when ``verify_set_split`` (and every set reward can be evaluated on a subset).
      [R] set construction (DRAGON's App. F procedure may differ).
    * ``loss="dpo"``: Diffusion-DPO on winner/loser pairs from :func:`make_pairs` (each pair shares t and ε);
      ``"kto"``: Diffusion-KTO on the unpaired D⁺ ∪ D⁻ (z₀ all-reduced over processes).
    * Errors: ε-error for VP ε-models (the native target for other prediction types), v-error ‖(ε − x0) − v_θ‖²
      for rectified flow ([R] flow adaptation).

    Multi-process: the split is computed identically on every process from the gathered batch; each process
    trains the D⁺/D⁻ members of its own shard (DPO pairs are formed within a shard, so pairs never straddle
    processes); micro-batch counts are aligned across processes with zero-weight dummy micro-batches.
    """

    loss: str = field(default="kto", metadata={"help": "Surrogate: kto (unpaired D⁺/D⁻) | dpo (pairs)."})
    beta: Optional[float] = field(default=None, metadata={"help": "β (null = 1000 for KTO, 5000 for DPO) [uncertain for DRAGON]."})
    lambda_pos: float = field(default=1.0, metadata={"help": "KTO weight of desirable samples."})
    lambda_neg: float = field(default=1.0, metadata={"help": "KTO weight of undesirable samples."})
    split: str = field(default="instance", metadata={"help": "instance (per-sample rewards) | set (contributions)."})
    split_mode: str = field(default="median", metadata={"help": "median | quantile."})
    quantile: float = field(default=0.25, metadata={"help": "split_mode=quantile: top/bottom fraction q."})
    split_scope: str = field(default="group", metadata={"help": "split=instance: within prompt group | batch."})
    set_contribution: str = field(default="auto", metadata={"help": "set rewards → contributions: auto | loo | given."})
    verify_set_split: bool = field(default=True, metadata={"help": "Greedily ensure R(D⁺) > R(D⁻) (set split)."})
    min_set_size: int = field(default=1, metadata={"help": "Smallest D⁺/D⁻ kept by the greedy verification."})
    cross_group_pairs: bool = field(default=True, metadata={"help": "DPO: zip leftovers across prompt groups."})
    num_timesteps: int = field(default=1, metadata={"help": "Noised copies (backward units) per sample per pass."})
    timestep_sampling: str = field(default="uniform", metadata={"help": "uniform | schedule (rollout's steps)."})
    t_min: float = field(default=0.0, metadata={"help": "Lower time bound in [0, 1] (uniform); raise it to train only "
                                                        "where the target attribute is set (tones recipes: 0.8)."})
    t_max: float = field(default=1.0, metadata={"help": "Upper time bound in [0, 1] (uniform)."})
    stochastic_rollout: bool = field(default=False, metadata={"help": "Sample rollouts with the stochastic kernel."})
    rollout_guidance_scale: Optional[float] = field(default=None, metadata={"help": "Rollout CFG (null = sampler's)."})

    def __post_init__(self):
        def bad(key, val, valid):
            raise ConfigError(f"'algorithm.{key}' is '{val}'; valid choices: {choices(valid)}")

        if self.loss not in LOSSES:
            bad("loss", self.loss, LOSSES)
        if self.split not in SPLITS:
            bad("split", self.split, SPLITS)
        if self.split_mode not in SPLIT_MODES:
            bad("split_mode", self.split_mode, SPLIT_MODES)
        if self.split_scope not in SPLIT_SCOPES:
            bad("split_scope", self.split_scope, SPLIT_SCOPES)
        if self.set_contribution not in SET_CONTRIBUTIONS:
            bad("set_contribution", self.set_contribution, SET_CONTRIBUTIONS)
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            bad("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        if self.beta is not None and self.beta <= 0:
            raise ConfigError(f"'algorithm.beta' must be > 0, got {self.beta}")
        if not 0.0 < self.quantile <= 0.5:
            raise ConfigError(f"'algorithm.quantile' must be in (0, 0.5], got {self.quantile}")
        if self.num_timesteps < 1:
            raise ConfigError(f"'algorithm.num_timesteps' must be >= 1, got {self.num_timesteps}")
        if self.min_set_size < 1:
            raise ConfigError(f"'algorithm.min_set_size' must be >= 1, got {self.min_set_size}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ConfigError(f"'algorithm.t_min'/'t_max' must satisfy 0 <= t_min < t_max <= 1, got "
                              f"{self.t_min}, {self.t_max}")
        if self.lambda_pos < 0 or self.lambda_neg < 0:
            raise ConfigError("'algorithm.lambda_pos'/'lambda_neg' must be >= 0")
        self._epoch = 0

    @property
    def needs_log_probs(self) -> bool:  # type: ignore[override]
        return self.stochastic_rollout

    @property
    def effective_beta(self) -> float:
        if self.beta is not None:
            return float(self.beta)
        return 1000.0 if self.loss == "kto" else 5000.0

    schedule_salt = 5
    always_shuffle = True

    def setup(self, view) -> None:
        view.generator.make_reference()

    def rollout_kwargs(self, view, iteration: int) -> Dict[str, Any]:
        return {} if self.rollout_guidance_scale is None else {"guidance_scale": float(self.rollout_guidance_scale)}

    # -------------------------------------------------------------------------------- split
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        # DRAGON does not use advantages (the split reads the gathered rewards from the batch); return the
        # aggregated score so the trainer's bookkeeping stays uniform.
        score = torch.nan_to_num(aggregate_rewards(per_reward, weights), nan=0.0)
        return score, {"zero_std_ratio": 0.0}, torch.ones(score.shape[0], dtype=torch.bool)

    def _set_value_fn(self, view, samples: torch.Tensor, prompts: Sequence[str], k: int) -> Callable:
        """R_k of an index subset of the gathered batch: the reward's ``set_value`` when it has one (genalign's
        distributional rewards), else the mean of its scores on the subset (rewards broadcasting their set value,
        e.g. ``digit_fd`` mode ``set``, ``digit_diversity``)."""
        reward = view.rewards[k]
        dev = view.device

        def value(idx: torch.Tensor) -> float:
            idx = torch.as_tensor(idx, dtype=torch.long)
            sub, ps = samples[idx].to(dev), [prompts[i] for i in idx.tolist()]
            if hasattr(reward, "set_value"):
                return float(reward.set_value(sub, ps))
            return float(torch.nanmean(reward(sub, ps).float()))

        return value

    def _contribution_kind(self, reward) -> str:
        if self.set_contribution != "auto":
            return self.set_contribution
        return "given" if hasattr(reward, "set_value") else "loo"

    def split_sets(self, view, batch) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        """Global D⁺/D⁻ index tensors (identical on every process) and split statistics."""
        per_reward, groups, prompts, weights = batch.per_reward, batch.group_ids, batch.prompts, batch.weights
        rewards = view.rewards
        n = per_reward.shape[0]
        stats: Dict[str, float] = {}
        if self.split == "instance":
            score = aggregate_rewards(per_reward, weights)
            pos, neg = split_instance(score, groups if self.split_scope == "group" else None, self.split_mode,
                                      self.quantile)
            ref_score = score
        else:
            set_ks = [k for k, r in enumerate(rewards) if r.scope == "set"]
            need_samples = any(self._contribution_kind(rewards[k]) == "loo" or hasattr(rewards[k], "set_value")
                               for k in set_ks)
            samples = view.gathered_samples(batch.rollout) if need_samples else None
            contrib = torch.zeros(n, dtype=torch.float64)
            values = []
            verifiable = bool(set_ks)
            for k, r in enumerate(rewards):
                w = float(weights[k])
                if r.scope == "set":
                    kind = self._contribution_kind(r)
                    fn = self._set_value_fn(view, samples, prompts, k) if samples is not None else None
                    if kind == "loo":
                        contrib += w * leave_one_out_contributions(fn, n)
                    else:  # the reward's per-sample scores are its contributions (R(D) − R(D∖i))
                        contrib += w * torch.nan_to_num(per_reward[:, k].double(), nan=0.0)
                    if kind == "loo" or hasattr(r, "set_value"):
                        values.append((w, fn))
                    else:
                        verifiable = False  # no way to evaluate this reward on a subset
                else:
                    col = per_reward[:, k].double()
                    contrib += w * torch.nan_to_num(col - torch.nanmean(col), nan=0.0)
                    values.append((w, lambda idx, c=per_reward[:, k]: float(torch.nanmean(c[idx].double()))))
            verify = self.verify_set_split and verifiable
            set_value = (lambda idx: sum(w * fn(idx) for w, fn in values)) if verify else None
            pos, neg = split_by_contribution(contrib, set_value, self.split_mode, self.quantile, self.min_set_size,
                                             strict=True)
            if verify:
                stats["dragon/set_value_batch"] = float(set_value(torch.arange(n)))
                if pos.numel() and neg.numel():
                    stats["dragon/set_value_pos"] = float(set_value(pos))
                    stats["dragon/set_value_neg"] = float(set_value(neg))
            ref_score = contrib
        if pos.numel():
            stats["dragon/score_pos"] = float(torch.nanmean(ref_score[pos].double()))
        if neg.numel():
            stats["dragon/score_neg"] = float(torch.nanmean(ref_score[neg].double()))
        stats["dragon/n_pos"] = float(pos.numel())
        stats["dragon/n_neg"] = float(neg.numel())
        return pos, neg, stats

    # -------------------------------------------------------------------------------- errors
    def errors(self, view, mb, unit: int, point_seeds: List[int]):
        """(err_θ with grad, err_ref) per sample of ``mb`` at a fresh (t, ε) drawn from ``point_seeds`` (a DPO
        pair passes the winner's seed for both members, so they share t and ε)."""
        gen = view.generator
        x0 = mb.states[:, -1].to(gen.device)
        pt = training_point(gen, mb.schedule, x0, point_seeds, unit, self._epoch, self.timestep_sampling,
                            self.t_min, self.t_max)
        target = gen.law.target(pt.x0, pt.noise, pt.time)
        with view.reference() as ref:
            err_ref = prediction_error(gen.predict(ref, pt.x_t, pt.t_model, mb.cond, 1.0), target)
        err = prediction_error(view.predict(pt.x_t, pt.t_model, mb.cond, 1.0), target)
        return err, err_ref

    # -------------------------------------------------------------------------------- training items
    def items(self, view, batch) -> List[Tuple[int, ...]]:
        """This process's training items: (i, label) for KTO over its D⁺/D⁻ members, (winner, loser) pairs for DPO
        (formed within the shard, so pairs never straddle processes). Empty when a side of the split is empty."""
        pos, neg, stats = self.split_sets(view, batch)
        self._stats = dict(stats)
        if pos.numel() == 0 or neg.numel() == 0:
            self._stats["dragon/skipped"] = 1.0
            return []
        n_local = len(batch)
        lo, hi = view.rank * n_local, (view.rank + 1) * n_local
        p = [int(i) - lo for i in pos.tolist() if lo <= i < hi]
        q = [int(i) - lo for i in neg.tolist() if lo <= i < hi]
        if self.loss == "kto":
            items = [(i, 1) for i in p] + [(i, 0) for i in q]
        else:
            w, l_ = make_pairs(torch.tensor(p, dtype=torch.long), torch.tensor(q, dtype=torch.long),
                               batch.group_ids[lo:hi], self.cross_group_pairs)
            items = list(zip(w.tolist(), l_.tolist()))
        self._stats["dragon/n_items"] = float(sum(view.gather(torch.tensor([len(items)])).tolist()))
        return items

    def units(self, batch, items) -> int:
        return self.num_timesteps

    def losses(self, view, batch, items):
        hook = view.sum_hook()
        for u in range(self.num_timesteps):
            yield self._unit_loss(view, batch.rollout, items, u, self.effective_beta, hook)

    def after_iteration(self, view) -> Dict[str, float]:
        self._epoch += 1
        return dict(getattr(self, "_stats", {}))

    def _unit_loss(self, view, ro, part, unit: int, beta: float, hook):
        if not part:  # a dummy micro-batch keeping collectives aligned: zero loss through the model
            mb = ro.index([0])
            err, _ = self.errors(view, mb, unit, mb.seeds)
            if self.loss == "kto" and hook is not None:
                hook(torch.zeros(2, dtype=torch.float64, device=err.device))  # the z₀ all-reduce of the others
            return err.sum() * 0.0, {}
        if self.loss == "kto":
            idx = [i for i, _ in part]
            mb = ro.index(idx)
            err, err_ref = self.errors(view, mb, unit, mb.seeds)
            y = torch.tensor([lab for _, lab in part], dtype=torch.bool)
            loss, st = diffusion_kto_loss(err, err_ref, y, beta, self.lambda_pos, self.lambda_neg, all_reduce=hook)
        else:
            w = [a for a, _ in part]
            l_ = [b for _, b in part]
            mb = ro.index(w + l_)
            seeds = [ro.seeds[a] for a in w] * 2  # a pair shares t and ε
            err, err_ref = self.errors(view, mb, unit, seeds)
            k = len(w)
            loss, st = diffusion_dpo_loss(err[:k], err_ref[:k], err[k:], err_ref[k:], beta)
        return loss, {kk: float(v) for kk, v in st.items()}
