"""RTDMD stage 1, AC-DMD (METHODS.md §9; arXiv 2605.26108; ``Harahan/RTDMD: rtdmd/trainers/ac_dmd_*.py``), on the
DMD2 machinery (student, teacher with CFG, fake score part, TTUR, backward simulation). Rectified flow only.

Per generator step: the student steps from the backward-simulated x_k (σ_k) to the boundary state x_s at σ_s =
σ_{k+1} *with* gradient (its deterministic Euler step, i.e. the sampler it is exported with); t ~ U[t_s + 10, 1000]
clamped to [20, 980]; x_t = a·x_s + σ_ts·ξ (sub-interval re-noising); the teacher (CFG) and the fake score predict v
at (x_t, t) and each is CPS-stepped (η = ``cps_eta``) back to σ_s with the **same** noise ξ′; L = ½·MSE(x_s,
sg(x_s − g)), g = (x_s^fake − x_s^real)/mean|x_s − x_s^real|. At σ_s = 0 (the last step) this is DMD.

The fake score trains on the rollout's boundary states x_s (the same step k) with the ambient DSM loss
(``move_scale_out``: min(1, 10σ_ts²)·‖v_φ − v*‖²) + ``consistency_weight``·the two-sample consistency regulariser
(two stop-gradient CPS steps to t' = t − Δ, Δ ~ U{1..200}).

``stage: 2``: the hybrid policy gradient (SubGRPO on seeded CPS steps, the fake score on the rollout, DMD + hinge
reward backprop on the deterministic last step) or the "simple sum" baseline, from a stage-1 checkpoint
(``init_from``): :mod:`genalign.algorithms.rtdmd_stage2`. Both AC times are drawn with the sub-interval law above
(the reference's logit-normal fake-score time applies to its non-AC fake loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from genalign.algorithms import rtdmd_stage2 as s2

from genalign.algorithms.dmd2 import DMD2, per_sample_draws
from genalign.core.seeding import torch_generator
from genalign.errors import ConfigError
from genalign.losses.rtdmd import (
    ac_dmd_loss, ac_fake_loss, consistency_h, consistency_two_sample_loss, sample_ac_timesteps,
    sample_consistency_timesteps, subinterval_renoise,
)
from genalign.models.steps import flow_cps_step
from genalign.registry import ALGORITHMS

_AC_SALT, _AC2_SALT, _CONS_SALT = 707, 808, 909


@ALGORITHMS.register("rtdmd")
@dataclass
class RTDMD(DMD2):
    stage: int = field(default=1, metadata={"help": "RTDMD stage: 1 (AC-DMD) | 2 (from a stage-1 checkpoint)."})
    cps_eta: float = field(default=0.9, metadata={"help": "η of the CPS steps back to σ_s."})
    consistency_weight: float = field(default=0.01, metadata={"help": "Weight of the consistency regulariser."})
    consistency_max_delta: int = field(default=200, metadata={"help": "Δ ~ U{1..max} of t' = t − Δ."})
    move_scale_out: bool = field(default=True, metadata={"help": "Ambient loss weighting of every shipped config."})
    few_step_sigmas: str = field(default="uniform", metadata={"help": "The reference's 1000/750/500/250 | stock."})
    # stage 2 (rtdmd_stage2.py)
    init_from: Optional[str] = field(default=None, metadata={"help": "Stage 2: stage-1 checkpoint (or run) folder."})
    init_from_ema: bool = field(default=False, metadata={"help": "Stage 2: start from the stage-1 checkpoint's EMA of "
                                                         "the student (stage 1 run with train.ema.decay > 0)."})
    stage2_mode: str = field(default="hybrid", metadata={"help": "Stage 2: hybrid | simple_sum (the baseline)."})
    clip_range: float = field(default=1e-5, metadata={"help": "Stage 2: SubGRPO PPO clip ε."})
    subgrpo_num_steps: int = field(default=2, metadata={"help": "Stage 2: trained stochastic steps per iteration."})
    pg_weight: float = field(default=1.0, metadata={"help": "Stage 2: weight of each SubGRPO step's PPO loss."})
    last_dmd_weight: float = field(default=1e-3, metadata={"help": "Stage 2: DMD weight on the last step."})
    bp_weight: float = field(default=1e-4, metadata={"help": "Stage 2: hinge reward-backprop weight (λ)."})
    hinge_on: str = field(default="reward", metadata={"help": "Stage 2: the hinge's input: reward (the reference) | "
                                                  "log_reward (log(R_w + 1e-6), a [0, 1] reward; not the paper's)."})
    bp_steps: str = field(default="last", metadata={"help": "Stage 2 (hybrid): where the hinge's gradient flows: "
                                                  "last (the reference: the last step) | all (the deterministic "
                                                  "Euler chain from x_T end to end; not the paper's)."})
    dmd_steps: str = field(default="last", metadata={"help": "Stage 2 (hybrid): the last-step DMD on the rollout's "
                                                   "last step (last, the reference) | on the deterministic chain's "
                                                   "x0 through every step (all; not the paper's)."})
    anchor_weight: float = field(default=0.0, metadata={"help": "Stage 2 (hybrid): weight of the regression of the "
                                                     "deterministic x0 to the frozen start's where that one is "
                                                     "rewarded (not the paper's; 0 = off)."})
    anchor_min_reward: float = field(default=0.9, metadata={"help": "Stage 2: R_w of the start's sample from which "
                                                         "the anchor keeps it."})
    hinge_margin: float = field(default=3.0, metadata={"help": "Stage 2: margin of relu(margin − R_w)."})
    adv_eps: float = field(default=1e-4, metadata={"help": "Stage 2: advantage std epsilon."})
    adv_clip: float = field(default=5.0, metadata={"help": "Stage 2: advantage clip."})

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in (1, 2):
            raise ConfigError(f"'algorithm.stage' is {self.stage}; valid choices: 1 (AC-DMD), 2 (hybrid policy "
                              "gradient from a stage-1 checkpoint)")
        if self.stage == 2:
            s2.check_stage2_options(self)
        self._stage1_ck, self._generator_phase, self._units = None, False, 1
        if not 0.0 <= self.cps_eta <= 1.0 or self.consistency_weight < 0 or self.consistency_max_delta < 1:
            raise ConfigError("'algorithm.cps_eta' must be in [0, 1], 'consistency_weight' >= 0, "
                              "'consistency_max_delta' >= 1")

    def setup(self, view) -> None:
        if getattr(view.law, "name", None) != "flow":
            raise ConfigError("RTDMD (AC-DMD) is defined for rectified-flow models (sd3, flux); use dmd2 for ε/v models")
        super().setup(view)  # the teacher copy is made from the loaded pipeline before the student's weights change
        self._stage1_ck = None
        if self.stage == 2:
            s2.check_stage2_setup(self, view)
            self._stage1_ck = s2.load_stage1(self, view)
            s2.make_anchor(self, view)

    def declare_parts(self, view):
        parts = super().declare_parts(view)
        if self._stage1_ck is not None:
            s2.load_stage1_fake(self, self._stage1_ck)
        return parts

    @property
    def hybrid(self) -> bool:
        return self.stage == 2 and self.stage2_mode == "hybrid"

    def phases(self, iteration: int):
        out = s2.stage2_phases(self, iteration) if self.stage == 2 else None
        return super().phases(iteration) if out is None else out

    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        if self.hybrid:
            return s2.stage2_advantages(self, per_reward, weights, group_ids)
        return super().advantages(per_reward, weights, group_ids, prompts, mode)

    def units(self, batch, items) -> int:
        if self.hybrid and self._generator_phase:
            return self._units
        return 1

    def items(self, view, batch):
        self._generator_phase = view.phase is not None and view.phase.name == "generator"
        if self.hybrid and self._generator_phase:
            self._units = s2.hybrid_units(self, view, batch)
        return super().items(view, batch)

    def losses(self, view, batch, items):
        if self.hybrid and view.phase.name == "generator":
            yield from s2.hybrid_losses(self, view, batch, items)
        else:
            yield from super().losses(view, batch, items)

    # ------------------------------------------------------------------------------------------ helpers
    def times(self, view, sigma_s, keys, salt):
        """Sub-interval model times t and sigmas σ_t above the boundary σ_s, per sample (split-invariant draws)."""
        n_t = view.law.num_train_timesteps
        t = torch.cat([sample_ac_timesteps(torch.tensor([float(sigma_s) * n_t]),
                                           torch_generator(view.cfg.train.seed, view.iteration, int(s), salt))
                       for s in keys])
        return t, t / n_t

    def boundary(self, ro, k):
        sig = ro.schedule.sigmas
        return float(sig[k]), float(sig[k + 1])

    # ------------------------------------------------------------------------------------------ generator
    def generator_loss(self, view, batch, ro):
        if self.stage == 2:  # simple_sum (the hybrid generator phase yields its own units)
            return s2.simple_sum_loss(self, view, batch, ro)
        pos, cond_cfg = self.conditioning(view, ro.prompts)
        k = self.simulation_step(view, ro.schedule.num_steps)
        loss, _, _, stats = self.ac_dmd_term(view, ro, k, pos, cond_cfg)
        return self.dm_weight * loss, {"dm_loss": float(loss.detach()), **stats}

    def ac_dmd_term(self, view, ro, k, pos, cond_cfg):
        """AC-DMD at step k: the student's Euler step x_k → x_s (σ_s = σ_{k+1}) with gradient, sub-interval
        re-noising above σ_s, teacher (CFG) and fake score CPS-stepped back to σ_s with the same ξ′. Returns (loss,
        x_s, the student's x̂0 at step k, stats); at the last step σ_s = 0, x_s = x̂0 and the loss is DMD's."""
        gen = view.generator
        sch, dev = ro.schedule, view.device
        s_k, s_s = self.boundary(ro, k)
        x_k = ro.states[:, k].to(dev).float()
        v = gen.predict(view.module("policy"), x_k, sch.timesteps[k].to(dev), pos, 1.0)
        # the student's deterministic step to the boundary, with gradient (the law's ODE step: flow Euler)
        x_s = gen.kernel_step(v, x_k, k, sch, view.cfg.sampler, False).prev_sample
        x0 = gen.law.x0_from(v.float(), x_k, s_k)
        loss, g = self.ac_dmd_at(view, x_s, s_s, ro.seeds, pos, cond_cfg)
        return loss, x_s, x0, {"dm_grad_abs": float(g.abs().mean()), "sim_step": float(k), "sigma_s": s_s}

    def ac_dmd_at(self, view, x_s, s_s: float, seeds, pos, cond_cfg):
        """The AC-DMD loss of boundary states x_s (with gradient) at σ_s: re-noise, teacher / fake CPS-stepped back
        with the same ξ′. Returns (loss, g)."""
        gen, dev = view.generator, view.device
        salt = _AC_SALT + 7 * view.step_count("policy")
        t, sig_t = self.times(view, s_s, seeds, salt)
        _, xi = per_sample_draws(view, seeds, salt, x_s.shape[1:])
        _, xi2 = per_sample_draws(view, seeds, salt + 1, x_s.shape[1:])
        x_t = subinterval_renoise(x_s.detach(), s_s, sig_t.double(), xi).float()
        with view.reference() as ref:
            v_real = gen.predict(ref, x_t, t.to(dev), cond_cfg, self.real_guidance)
        with torch.no_grad():
            v_fake = gen.predict(self.fake, x_t, t.to(dev), pos, 1.0)
        sig_t = sig_t.to(dev)
        back = torch.full_like(sig_t, s_s)
        xs_real = flow_cps_step(v_real, x_t, sig_t, back, self.cps_eta, noise=xi2).prev_sample
        xs_fake = flow_cps_step(v_fake, x_t, sig_t, back, self.cps_eta, noise=xi2).prev_sample
        return ac_dmd_loss(x_s, xs_real, xs_fake, self.normaliser_eps)

    # ------------------------------------------------------------------------------------------ fake score
    def fake_loss(self, view, batch, ro, items=()):
        gen, dev = view.generator, view.device
        pos, _ = self.conditioning(view, ro.prompts)
        k = self.simulation_step(view, ro.schedule.num_steps)
        _, s_s = self.boundary(ro, k)
        x_s = ro.states[:, k + 1].to(dev).float()
        salt = _AC2_SALT + 7 * view.step_count("fake_score")
        t, sig_t = self.times(view, s_s, ro.seeds, salt)
        _, xi = per_sample_draws(view, ro.seeds, salt, x_s.shape[1:])
        x_t = subinterval_renoise(x_s, s_s, sig_t.double(), xi).float()
        v = gen.predict(view.module("fake_score"), x_t, t.to(dev), pos, 1.0)
        lf = ac_fake_loss(v, x_s, s_s, sig_t.double(), xi, move_scale_out=self.move_scale_out)
        stats = {"fake_loss": float(lf.detach())}
        loss = lf
        if self.consistency_weight > 0:
            g = torch_generator(view.cfg.train.seed, view.iteration, view.step_count("fake_score"), _CONS_SALT)
            t2 = sample_consistency_timesteps(t, g, self.consistency_max_delta)
            sig2 = (t2 / view.law.num_train_timesteps).to(dev)
            sig_t = sig_t.to(dev)
            h_a = consistency_h(x_t, v, sig_t)
            hs = []
            with torch.no_grad():
                for j in (1, 2):
                    _, z = per_sample_draws(view, ro.seeds, salt + _CONS_SALT + j, x_s.shape[1:])
                    x2 = flow_cps_step(v.detach(), x_t, sig_t, sig2, self.cps_eta, noise=z).prev_sample
                    hs.append(consistency_h(x2, gen.predict(self.fake, x2, t2.to(dev), pos, 1.0), sig2))
            lc = consistency_two_sample_loss(h_a, hs[0], hs[1])
            loss = loss + self.consistency_weight * lc
            stats["consistency_loss"] = float(lc.detach())
        return loss, stats
