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

Not built: stage 2 (the hybrid policy gradient: SubGRPO on seeded CPS steps, the fake score on the rollout cache,
DMD + hinge reward backprop on the last step) — ``stage: 2`` is refused. Both AC times are drawn with the
sub-interval law above (the reference's logit-normal fake-score time applies to its non-AC fake loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    stage: int = field(default=1, metadata={"help": "RTDMD stage: 1 (AC-DMD; stage 2 is not built)."})
    cps_eta: float = field(default=0.9, metadata={"help": "η of the CPS steps back to σ_s."})
    consistency_weight: float = field(default=0.01, metadata={"help": "Weight of the consistency regulariser."})
    consistency_max_delta: int = field(default=200, metadata={"help": "Δ ~ U{1..max} of t' = t − Δ."})
    move_scale_out: bool = field(default=True, metadata={"help": "Ambient loss weighting of every shipped config."})

    def __post_init__(self):
        super().__post_init__()
        if self.stage != 1:
            raise ConfigError(f"'algorithm.stage' is {self.stage}; only RTDMD stage 1 (AC-DMD) is built — stage 2 "
                              "(hybrid policy gradient) is not")
        if not 0.0 <= self.cps_eta <= 1.0 or self.consistency_weight < 0 or self.consistency_max_delta < 1:
            raise ConfigError("'algorithm.cps_eta' must be in [0, 1], 'consistency_weight' >= 0, "
                              "'consistency_max_delta' >= 1")

    def setup(self, view) -> None:
        if getattr(view.law, "name", None) != "flow":
            raise ConfigError("RTDMD (AC-DMD) is defined for rectified-flow models (sd3, flux); use dmd2 for ε/v models")
        super().setup(view)

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
        gen = view.generator
        pos, cond_cfg = self.conditioning(view, ro.prompts)
        sch, dev = ro.schedule, view.device
        k = self.simulation_step(view, sch.num_steps)
        s_k, s_s = self.boundary(ro, k)
        x_k = ro.states[:, k].to(dev).float()
        v = gen.predict(view.module("policy"), x_k, sch.timesteps[k].to(dev), pos, 1.0)
        x_s = x_k + (s_s - s_k) * v  # the student's Euler step to the boundary, with gradient
        salt = _AC_SALT + 7 * view.step_count("policy")
        t, sig_t = self.times(view, s_s, ro.seeds, salt)
        _, xi = per_sample_draws(view, ro.seeds, salt, x_s.shape[1:])
        _, xi2 = per_sample_draws(view, ro.seeds, salt + 1, x_s.shape[1:])
        x_t = subinterval_renoise(x_s.detach(), s_s, sig_t.double(), xi).float()
        with view.reference() as ref:
            v_real = gen.predict(ref, x_t, t.to(dev), cond_cfg, self.real_guidance)
        with torch.no_grad():
            v_fake = gen.predict(self.fake, x_t, t.to(dev), pos, 1.0)
        sig_t = sig_t.to(dev)
        back = torch.full_like(sig_t, s_s)
        xs_real = flow_cps_step(v_real, x_t, sig_t, back, self.cps_eta, noise=xi2).prev_sample
        xs_fake = flow_cps_step(v_fake, x_t, sig_t, back, self.cps_eta, noise=xi2).prev_sample
        loss, g = ac_dmd_loss(x_s, xs_real, xs_fake, self.normaliser_eps)
        return self.dm_weight * loss, {"dm_loss": float(loss.detach()), "dm_grad_abs": float(g.abs().mean()),
                                       "sim_step": float(k), "sigma_s": s_s}

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
