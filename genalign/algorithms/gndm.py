"""R_dm / GNDM / GNDMR on the trainer — a **reconstruction** [R] (METHODS.md §10; arXiv 2603.28460 has no public
code; the pure parts are in :mod:`genalign.losses.gndm`).

Built on :class:`~genalign.algorithms.dmd2.DMD2` (same student, teacher, fake score part, TTUR, GAN and regression
options). The DM re-noising draws (t, ε) are shared by the samples of a prompt group (keyed on the group id), so
the group mean of R_dm cancels c(t) and the scale of w(t). R_dm is formed from the two forward passes DMD already
makes, in x̂0 space: R_dm,i = mean‖x̂0_fake − x0‖² − mean‖x̂0_real − x0‖² with x0 the student's sample. Within a
group (one shared t) the ε- and v-errors are the x̂0-errors times one factor (α/σ or 1/σ), which group
normalisation removes: the same Â as the ε/v reading.

``estimator`` (named option):

* ``policy_gradient`` (primary reading): GRPO/PPO on the student's stochastic transitions (a rollout with log-probs:
  ``sampler.kernel`` cps/sde for flow, ddim η > 0 for ε; needs ``sampler.num_steps`` ≥ 2 since a 1-step student
  has no stochastic step) with Â = group-normalised R_dm; PPO ratios let ``optimizer_steps_per_iteration`` /
  ``train.inner_epochs`` reuse a rollout ("IS"). **GNDMR**: with ``rewards`` in the config, A = Σ_k w_k·Â_k over
  R_dm and the group-normalised external rewards, w from ``gndmr_weights`` (fixed | inverse_std) with
  ``dm_reward_weight`` the base weight of R_dm and each reward's ``weight`` the others'.
* ``pathwise`` (alternative): DMD's pathwise gradient with the group-mean normaliser; with ``reweight_scale`` λ > 0
  each sample's g is scaled by max(0, 1 − λ·Â_i).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from genalign.algorithms.dmd2 import DMD2, per_sample_draws
from genalign.core.phases import Phase
from genalign.errors import ConfigError, choices
from genalign.losses.dmd import surrogate_loss
from genalign.losses.gndm import (
    GNDMRWeights, check_gndm_estimator, dm_reward, gndm_pathwise_gradient, group_normalise, ppo_clip_loss, ppo_ratio,
)
from genalign.registry import ALGORITHMS

_RDM_SALT = 606
WEIGHT_MODES = ("fixed", "inverse_std")


@ALGORITHMS.register("gndm")
@dataclass
class GNDM(DMD2):
    estimator: str = field(default="policy_gradient", metadata={"help": "[R] policy_gradient | pathwise."})
    adv_delta: float = field(default=1e-4, metadata={"help": "δ of Â = (R − mean_G)/(std_G + δ)."})
    adv_clip: float = field(default=5.0, metadata={"help": "Clip of the combined advantage."})
    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip ε (policy_gradient)."})
    reweight_scale: float = field(default=0.0, metadata={"help": "Pathwise: g_i·max(0, 1 − λ·Â_i) (0 = off)."})
    gndmr_weights: str = field(default="fixed", metadata={"help": "[R] GNDMR weights: fixed | inverse_std."})
    dm_reward_weight: float = field(default=1.0, metadata={"help": "GNDMR base weight of R_dm."})

    def __post_init__(self):
        super().__post_init__()
        check_gndm_estimator(self.estimator)
        if self.gndmr_weights not in WEIGHT_MODES:
            raise ConfigError(f"'algorithm.gndmr_weights' is {self.gndmr_weights!r}; valid choices: "
                              f"{choices(WEIGHT_MODES)}")
        if self.adv_delta <= 0 or self.clip_range <= 0 or self.reweight_scale < 0:
            raise ConfigError("'algorithm.adv_delta' and 'clip_range' must be > 0, 'reweight_scale' >= 0")
        self.mixer = None
        self._adv, self._pg_phase, self._last_rdm = None, False, float("nan")

    @property
    def pg(self) -> bool:
        return self.estimator == "policy_gradient"

    def setup(self, view) -> None:
        super().setup(view)
        if self.pg and view.cfg.sampler.num_steps < 2:
            raise ConfigError("GNDM's policy_gradient estimator needs a stochastic step: 'sampler.num_steps' >= 2 "
                              "(or algorithm.estimator=pathwise for a 1-step student)")
        self.mixer = GNDMRWeights(1 + len(view.rewards), "fixed" if self.gndmr_weights == "fixed" else "inverse_std",
                                  [self.dm_reward_weight] + [float(r.weight) for r in view.rewards])

    def phases(self, iteration: int):
        if not self.pg:
            return super().phases(iteration)
        out = [Phase(self.fake_parts(), needs=self.needs() | {"log_probs"}, name="fake_score")]
        if self.trains_generator(iteration):
            extra = {"log_probs"} | ({"rewards"} if self.mixer is not None and self.mixer.num_rewards > 1 else set())
            out.append(Phase(("policy",), needs=self.needs() | extra, name="generator"))
        return out

    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        # GNDMR combines the rewards itself (with R_dm): hand the trainer's batch the raw scores untouched
        return per_reward, {}, torch.ones(per_reward.shape[0], dtype=torch.bool)

    def dm_keys(self, ro):
        return [int(g) for g in ro.group_ids]  # one (t, ε) draw per prompt group

    # ------------------------------------------------------------------------------------------ R_dm
    @torch.no_grad()
    def dm_rewards(self, view, ro) -> torch.Tensor:
        """[R] R_dm of each sample's final x0, with (t, ε) shared within its group (no grad)."""
        pos, cond_cfg = self.conditioning(view, ro.prompts)
        x0 = ro.states[:, -1].to(view.device).float()
        x_t, _, time, t_model = self.renoise(view, x0, self.dm_keys(ro), _RDM_SALT, self.dm_t_min, self.dm_t_max)
        real = self.teacher_x0(view, x_t, time, t_model, cond_cfg)
        fake = self.fake_x0(view, x_t, time, t_model, pos)
        return dm_reward(fake, real, x0)

    def items(self, view, batch) -> List[Any]:
        self._pg_phase = view.phase is not None and view.phase.name == "generator" and self.pg
        if self._pg_phase:
            self._adv = self.combined_advantages(view, batch)
        return list(range(len(batch)))

    def combined_advantages(self, view, batch) -> torch.Tensor:
        """Â of R_dm per group [+ the external rewards' Â, mixed by the GNDMR weights], clipped."""
        ro = batch.rollout
        r_dm = self.dm_rewards(view, ro).cpu().double()
        gid = ro.group_ids.cpu()
        cols = [group_normalise(r_dm, gid, self.adv_delta)]
        raw = [r_dm]
        if batch.per_reward is not None and self.mixer.num_rewards > 1:
            lo = view.rank * len(ro)
            local = batch.per_reward[lo:lo + len(ro)].double()
            for k in range(local.shape[1]):
                cols.append(group_normalise(local[:, k], gid, self.adv_delta))
                raw.append(local[:, k])
        if len(cols) != self.mixer.num_rewards:
            raise ConfigError("GNDMR needs the rewards' scores: keep 'rewards' and the policy_gradient estimator")
        self.mixer.update(view.gather(torch.stack(raw, 1)))
        adv = self.mixer.combine(torch.stack(cols, 1))
        self._last_rdm = float(r_dm.mean())
        return adv.clamp(-self.adv_clip, self.adv_clip).float()

    # ------------------------------------------------------------------------------------------ losses
    def units(self, batch, items) -> int:
        if self._pg_phase:  # one backward unit per trained stochastic step
            return int(batch.rollout.train_steps.shape[1])
        return 1

    def losses(self, view, batch, items):
        if view.phase.name != "generator" or not self.pg:
            yield from super().losses(view, batch, items)
            return
        mb = batch.rollout.index(items)
        adv = self._adv[torch.as_tensor(items, dtype=torch.long)].to(view.device)
        ar = torch.arange(len(mb))
        for k in range(mb.train_steps.shape[1]):
            j = mb.train_steps[:, k]
            lp, _, _ = view.step_log_prob(mb, j)
            ratio = ppo_ratio(lp, mb.log_probs[ar, j].to(lp.device))
            loss, st = ppo_clip_loss(ratio, adv, self.clip_range)
            yield loss, {"policy_loss": float(loss.detach()), "r_dm": self._last_rdm, **st}

    def dm_term(self, view, x0, x0_real, x0_fake, ro):
        """Pathwise [R]: group-mean normaliser, optional reweighting by the group-normalised R_dm."""
        gid = ro.group_ids.to(x0.device)
        adv = None
        if self.reweight_scale > 0:
            adv = group_normalise(dm_reward(x0_fake, x0_real, x0.detach()).cpu(), gid.cpu(), self.adv_delta)
        g = gndm_pathwise_gradient(x0, x0_real, x0_fake, gid, adv, self.reweight_scale, self.normaliser_eps)
        return surrogate_loss(x0, g), g

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {} if self.mixer is None else {f"gndmr.{k}": v for k, v in self.mixer.state_dict().items()}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        sub = {k[len("gndmr."):]: v for k, v in sd.items() if k.startswith("gndmr.")}
        if sub and self.mixer is not None:
            self.mixer.load_state_dict(sub)


__all__ = ["GNDM", "per_sample_draws"]
