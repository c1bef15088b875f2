"""DMD2 distillation on the parts-and-phases trainer (METHODS.md §8; Yin et al. arXiv 2311.18828 and 2405.14867;
facts from ``tianweiy/DMD2: main/sd_guidance.py, main/sd_unified_model.py``).

* **student** = the policy (LoRA or full), initialised from the loaded pipeline (the teacher); it samples with the
  generator's own deterministic kernel at ``sampler.num_steps`` steps (flow: Euler on the stock sigmas; VP: DDIM
  η = 0 on "trailing" timesteps, e.g. 999/749/499/249 — :meth:`Generator.prepare_few_step`), so the stock pipeline
  samples an exported student exactly (``genalign export``).
* **teacher** = the frozen reference (``view.reference()``: adapter off, or a frozen copy) with CFG ``real_guidance``.
* **fake score** = a part (``fake_score``): a copy of the denoiser made before training (= the teacher, plus an
  identity LoRA when the student is LoRA), own optimiser, denoising loss on the student's samples through the noise
  law (ε, VP v or flow v = ε − x0).
* **TTUR**: the fake score (and GAN head) step every iteration on a fresh rollout of the student; the generator
  every ``fake_updates_per_generator``-th iteration (DMD2: 5 for SDXL, 10 for SD1.5).
* **generator loss** (the ``policy`` phase): with backward simulation, the rollout's state x_k at a step k ~ U{0..K−1}
  (one k per iteration on every rank; the rollout *is* the current student run without gradient for k steps), the
  student step at t_k *with* gradient gives x̂0; L = λ_DM·DMD surrogate (teacher CFG vs fake score at re-noised
  x̂0) [+ λ_G·softplus(−D)] [+ λ_reg·regression to teacher ODE pairs].
* **GAN head** (``gan: true``): a part on the fake score's bottleneck features (family hook ``feature_spec``),
  fed with re-noised real latents (``data.real`` encoded by the pipeline's VAE) and re-noised student samples.
  Real data carries no captions: it is conditioned on the micro-batch's prompts.
* **DMD v1 regression** (``regression_weight > 0``): ``regression_pairs`` teacher ODE pairs (z, y) at
  ``regression_steps`` steps with CFG, computed once at start (fixed seeds; recomputed identically on resume);
  the student's first-step x̂0 from z is regressed to y with ``regression_distance`` (pseudo-Huber by default: the
  weight-free LPIPS replacement; or mse).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from genalign.algorithms.base import Algorithm
from genalign.core.phases import PartSpec, Phase
from genalign.core.seeding import torch_generator
from genalign.errors import ConfigError, choices
from genalign.models.base import cat_cond
from genalign.losses.dmd import (
    REGRESSION_DISTANCES, GANHead, dmd_loss, fake_score_loss, gan_discriminator_loss, gan_generator_loss,
    regression_loss,
)
from genalign.registry import ALGORITHMS

_FAKE_SALT, _GEN_SALT, _GAN_SALT, _K_SALT, _REG_SALT = 101, 202, 303, 404, 505
FEW_STEP_SIGMAS = ("stock", "uniform")


def student_schedule_steps(few_step_sigmas: str, num_steps: int) -> Optional[int]:
    """What ``Generator.prepare_few_step`` gets: the student's K for ``uniform`` flow sigmas 1, (K−1)/K, …, 1/K
    (DMD2's 999/749/499/249, RTDMD's [1000, 750, 500, 250]/1000), None for the stock scheduler's (1, .667, .334,
    .001 at K = 4, whose last step barely moves). On the toy the 4-step DMD2 student measured FD 92 (stock) against
    178 (uniform) at 400 iterations, so DMD2 keeps ``stock`` by default; RTDMD defaults to its reference's
    ``uniform``. ε/v students always take trailing timesteps (999/749/499/249)."""
    return int(num_steps) if few_step_sigmas == "uniform" else None


@contextlib.contextmanager
def frozen(*modules):
    """Parameters not tracked by autograd (gradients still flow to the inputs): the fake score and GAN head in the
    generator phase, so their ``.grad`` stays clean for their own phase."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def per_sample_draws(view, seeds, salt: int, shape) -> Tuple[torch.Tensor, torch.Tensor]:
    """(u ~ U[0, 1) (N,), ε (N, *shape)) per sample from (run seed, iteration, sample seed, salt): identical however
    the batch is split across processes or micro-batches, and on resume."""
    us, eps = [], []
    for s in seeds:
        g = torch_generator(view.cfg.train.seed, view.iteration, int(s), salt)
        us.append(torch.rand((), generator=g))
        eps.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(us), torch.stack(eps).to(view.device)


@ALGORITHMS.register("dmd2")
@dataclass
class DMD2(Algorithm):
    needs_rewards = False
    needs_log_probs = False
    few_step_student = True  # `genalign export` writes the student's scheduler and step count (student.json)

    real_guidance: float = field(default=3.0, metadata={"help": "Teacher CFG s_real (1.75 SD1.5, 8 SDXL)."})
    fake_updates_per_generator: int = field(default=5, metadata={"help": "TTUR: generator steps every N iterations."})
    backward_simulation: bool = field(default=True, metadata={"help": "Train step k on the student's own x_k."})
    dm_weight: float = field(default=1.0, metadata={"help": "Weight of the DM surrogate loss."})
    dm_t_min: float = field(default=0.02, metadata={"help": "DM re-noising time range, low (fraction of T)."})
    dm_t_max: float = field(default=0.98, metadata={"help": "DM re-noising time range, high."})
    fake_t_min: float = field(default=0.0, metadata={"help": "Fake-score training time range, low."})
    fake_t_max: float = field(default=1.0, metadata={"help": "Fake-score training time range, high."})
    normaliser_eps: float = field(default=0.0, metadata={"help": "Guard on mean|x − x̂_real| (0 = reference)."})
    fake_score_lr: Optional[float] = field(default=None, metadata={"help": "Fake score LR (null = train.*)."})
    gan: bool = field(default=False, metadata={"help": "DMD2 GAN head on the fake score's features."})
    gan_generator_weight: float = field(default=1e-3, metadata={"help": "λ_G (1e-3 SD1.5, 5e-3 SDXL)."})
    gan_discriminator_weight: float = field(default=1e-2, metadata={"help": "λ_D (1e-2)."})
    gan_num_down: int = field(default=2, metadata={"help": "Stride-2 conv blocks of a conv GAN head."})
    gan_head_lr: Optional[float] = field(default=None, metadata={"help": "GAN head LR (null = fake score's)."})
    regression_weight: float = field(default=0.0, metadata={"help": "λ_reg of DMD v1's regression (0 = off)."})
    regression_distance: str = field(default="pseudo_huber", metadata={"help": "pseudo_huber | mse."})
    regression_c: Optional[float] = field(default=None, metadata={"help": "Pseudo-Huber c (null = 0.00054·√d)."})
    regression_pairs: int = field(default=64, metadata={"help": "Teacher ODE pairs computed at start."})
    regression_steps: int = field(default=40, metadata={"help": "Teacher ODE steps of the pairs."})
    regression_batch: int = field(default=8, metadata={"help": "Pairs per generator micro-batch."})
    few_step_sigmas: str = field(default="stock", metadata={"help": "Flow students: stock | uniform (1, …, 1/K)."})

    def __post_init__(self):
        if self.fake_updates_per_generator < 1:
            raise ConfigError(f"'algorithm.fake_updates_per_generator' must be >= 1, got "
                              f"{self.fake_updates_per_generator}")
        if self.regression_distance not in REGRESSION_DISTANCES:
            raise ConfigError(f"'algorithm.regression_distance' is {self.regression_distance!r}; valid choices: "
                              f"{choices(REGRESSION_DISTANCES)}")
        for lo, hi in (("dm_t_min", "dm_t_max"), ("fake_t_min", "fake_t_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 0.0 <= a < b <= 1.0:
                raise ConfigError(f"'algorithm.{lo}'/'{hi}' must satisfy 0 <= {lo} < {hi} <= 1, got {a}, {b}")
        if self.few_step_sigmas not in FEW_STEP_SIGMAS:
            raise ConfigError(f"'algorithm.few_step_sigmas' is {self.few_step_sigmas!r}; valid choices: "
                              f"{choices(FEW_STEP_SIGMAS)}")
        if self.real_guidance < 1.0:
            raise ConfigError(f"'algorithm.real_guidance' must be >= 1 (1 = no CFG), got {self.real_guidance}")
        for k in ("dm_weight", "gan_generator_weight", "gan_discriminator_weight", "regression_weight",
                  "normaliser_eps"):
            if getattr(self, k) < 0:
                raise ConfigError(f"'algorithm.{k}' must be >= 0, got {getattr(self, k)}")
        if self.regression_weight > 0 and min(self.regression_pairs, self.regression_steps,
                                              self.regression_batch) < 1:
            raise ConfigError("'algorithm.regression_pairs', 'regression_steps' and 'regression_batch' must be >= 1")
        self.fake = None
        self.head = None
        self.pairs = None

    # ------------------------------------------------------------------------------------------ parts and phases
    def setup(self, view) -> None:
        view.generator.prepare_few_step(student_schedule_steps(self.few_step_sigmas, view.cfg.sampler.num_steps))
        view.generator.make_reference()  # full fine-tuning: a frozen teacher copy (LoRA: the adapter off)

    def declare_parts(self, view) -> Dict[str, Any]:
        gen = view.generator
        # a copy of the denoiser before any training = the teacher (an identity adapter when LoRA): DMD2 initialises
        # the fake score from the teacher
        self.fake = copy.deepcopy(gen.denoiser).train()
        parts = {"fake_score": PartSpec(self.fake, lr=self.fake_score_lr)}
        if self.gan:
            _, kind, channels = gen.feature_spec(self.fake)
            torch.manual_seed(view.cfg.train.seed)
            self.head = GANHead(channels, kind=kind, num_down=self.gan_num_down)
            parts["gan_head"] = PartSpec(self.head, lr=self.gan_head_lr or self.fake_score_lr)
        return parts

    def after_parts(self, view) -> None:
        if self.regression_weight > 0:
            self.pairs = self._teacher_pairs(view)

    def fake_parts(self) -> Tuple[str, ...]:
        return ("fake_score", "gan_head") if self.gan else ("fake_score",)

    def needs(self):
        return frozenset({"rollout", "real"} if self.gan else {"rollout"})

    def phases(self, iteration: int):
        out = [Phase(self.fake_parts(), needs=self.needs(), name="fake_score")]
        if self.trains_generator(iteration):
            out.append(Phase(("policy",), needs=self.needs(), name="generator"))
        return out

    def trains_generator(self, iteration: int) -> bool:
        return (iteration + 1) % self.fake_updates_per_generator == 0

    def rollout_kwargs(self, view, iteration: int) -> Dict[str, Any]:
        return {"guidance_scale": 1.0}  # the student samples without CFG

    # ------------------------------------------------------------------------------------------ helpers
    def conditioning(self, view, prompts):
        """(student/fake conditioning {"pos"}, teacher conditioning with the negative branch when CFG)."""
        cond = view.generator.encode(list(prompts), self.real_guidance)
        return {"pos": cond["pos"]}, cond

    def teacher_x0(self, view, x_t, time, t_model, cond_cfg) -> torch.Tensor:
        gen = view.generator
        with view.reference() as ref:
            out = gen.predict(ref, x_t, t_model.to(view.device), cond_cfg, self.real_guidance)
        return gen.law.x0_from(out.float(), x_t, time)

    def fake_x0(self, view, x_t, time, t_model, pos) -> torch.Tensor:
        gen = view.generator
        with torch.no_grad():
            out = gen.predict(self.fake, x_t, t_model.to(view.device), pos, 1.0)
        return gen.law.x0_from(out.float(), x_t, time)

    def renoise(self, view, x0, seeds, salt, t_min, t_max):
        """x_t = law.interpolate(x0, ε, time) at per-sample (time, model time) from the law's training range."""
        law = view.generator.law
        u, eps = per_sample_draws(view, seeds, salt, x0.shape[1:])
        time, t_model = law.sample_training_time(u, t_min, t_max)
        time = time.to(view.device)
        return law.interpolate(x0, eps, time), eps, time, t_model.to(view.device)

    def simulation_step(self, view, num_steps: int) -> int:
        """k ~ U{0..K−1}, one per iteration, identical on every rank (derived from the run seed and iteration)."""
        if num_steps == 1:
            return 0
        g = torch_generator(view.cfg.train.seed, view.iteration, _K_SALT)
        return int(torch.randint(0, num_steps, (1,), generator=g))

    def student_x0(self, view, ro, pos) -> Tuple[torch.Tensor, int, Optional[torch.Tensor]]:
        """The student's x̂0 with gradient at the backward-simulated state x_k (or, without backward simulation, at
        the student's own final sample forward-noised to t_k: the train/inference mismatch DMD2 removes), and the
        regression loss when on — one forward of the (distributed) student for both."""
        gen, law = view.generator, view.generator.law
        sch = ro.schedule
        k = self.simulation_step(view, sch.num_steps)
        times = law.schedule_times(sch)
        time_k = times[k].to(view.device)
        if self.backward_simulation:
            x_k = ro.states[:, k].to(view.device).float()
        else:
            _, eps = per_sample_draws(view, ro.seeds, _K_SALT, ro.states.shape[2:])
            x_k = law.interpolate(ro.states[:, -1].to(view.device).float(), eps, time_k)
        n = len(x_k)
        xs, ts, conds = [x_k], [sch.timesteps[k].expand(n)], [pos["pos"]]
        if self.regression_weight > 0:
            z, t0, time0, pos_r, y = self.regression_inputs(view)
            xs.append(z)
            ts.append(t0.expand(len(z)))
            conds.append(pos_r["pos"])
        out = gen.predict(view.module("policy"), torch.cat(xs), torch.cat(ts).to(view.device),
                          {"pos": cat_cond(conds)}, 1.0)
        reg = None
        if self.regression_weight > 0:
            reg = regression_loss(law.x0_from(out[n:], z, time0), y, self.regression_distance, self.regression_c)
        return law.x0_from(out[:n], x_k, time_k), k, reg

    def real_latents(self, view, batch, items) -> torch.Tensor:
        """The real images paired with these items (item i → real row i mod R), as latents."""
        if batch.real is None:
            raise ConfigError("the DMD2 GAN head needs real data: set 'data.real' (an image folder, a .safetensors "
                              "file or toy:digits)")
        real = batch.real[torch.as_tensor(list(items), dtype=torch.long) % len(batch.real)]
        size = (view.cfg.model.height, view.cfg.model.width)
        if tuple(real.shape[-2:]) != size:  # e.g. 16-pixel toy digits for a 32-pixel model
            real = torch.nn.functional.interpolate(real.float(), size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return view.generator.encode_images(real.float()).float()

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, view, batch, items) -> Iterator[Tuple[torch.Tensor, Dict[str, float]]]:
        ro = batch.rollout.index(items)
        if view.phase.name == "generator":
            yield self.generator_loss(view, batch, ro)
        else:
            yield self.fake_loss(view, batch, ro, items)

    def fake_loss(self, view, batch, ro, items=()):
        """L_fake = ‖pred_φ(x_t, t) − target‖² on the student's detached samples [+ λ_D·L_D]."""
        gen, law = view.generator, view.generator.law
        pos, _ = self.conditioning(view, ro.prompts)
        x0 = ro.states[:, -1].to(view.device).float()
        salt = _FAKE_SALT + 7 * view.step_count("fake_score")
        x_t, eps, time, t_model = self.renoise(view, x0, ro.seeds, salt, self.fake_t_min, self.fake_t_max)
        fake = view.module("fake_score")
        if not self.gan:
            pred = gen.predict(fake, x_t, t_model, pos, 1.0)
            loss = fake_score_loss(pred, law.target(x0, eps, time))
            return loss, {"fake_loss": float(loss.detach())}
        real = self.real_latents(view, batch, items)
        xr_t, _, _, tr_model = self.renoise(view, real, ro.seeds, salt + _GAN_SALT, self.fake_t_min, self.fake_t_max)
        n = len(ro)  # one forward of the (distributed) fake score for the student's and the real samples
        pred, feats = gen.predict_with_features(fake, torch.cat([x_t, xr_t]), torch.cat([t_model, tr_model]),
                                                cat_cond([pos["pos"], pos["pos"]]))
        lf = fake_score_loss(pred[:n], law.target(x0, eps, time))
        d = view.module("gan_head")(feats)
        d_fake, d_real = d[:n], d[n:]
        ld = gan_discriminator_loss(d_real, d_fake)
        loss = lf + self.gan_discriminator_weight * ld
        return loss, {"fake_loss": float(lf.detach()), "gan_d_loss": float(ld.detach()),
                      "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}

    def generator_loss(self, view, batch, ro):
        gen = view.generator
        pos, cond_cfg = self.conditioning(view, ro.prompts)
        x0, k, reg = self.student_x0(view, ro, pos)
        salt = _GEN_SALT + 7 * view.step_count("policy")
        x_t, _, time, t_model = self.renoise(view, x0.detach(), self.dm_keys(ro), salt, self.dm_t_min,
                                             self.dm_t_max)
        real = self.teacher_x0(view, x_t, time, t_model, cond_cfg)
        fake = self.fake_x0(view, x_t, time, t_model, pos)
        ldm, g = self.dm_term(view, x0, real, fake, ro)
        loss = self.dm_weight * ldm
        stats = {"dm_loss": float(ldm.detach()), "dm_grad_abs": float(g.abs().mean()), "sim_step": float(k)}
        if self.gan and self.gan_generator_weight > 0:
            xg_t, _, _, tg_model = self.renoise(view, x0, ro.seeds, salt + _GAN_SALT, self.fake_t_min,
                                                self.fake_t_max)
            with frozen(self.fake, self.head):
                _, feats = gen.predict_with_features(self.fake, xg_t, tg_model, pos["pos"])
                lg = gan_generator_loss(self.head(feats))
            loss = loss + self.gan_generator_weight * lg
            stats["gan_g_loss"] = float(lg.detach())
        if reg is not None:
            loss = loss + self.regression_weight * reg
            stats["reg_loss"] = float(reg.detach())
        return loss, stats

    def dm_keys(self, ro):
        """What the DM re-noising draws (t, ε) are keyed on: each sample's seed (GNDM: its group id)."""
        return ro.seeds

    def dm_term(self, view, x0, x0_real, x0_fake, ro):
        """The DMD2 surrogate ½·mean(x − sg(x − g))² (gradient g/numel); GNDM overrides the normaliser."""
        return dmd_loss(x0, x0_real, x0_fake, self.normaliser_eps)

    # ------------------------------------------------------------------------------------------ DMD v1 regression
    @torch.no_grad()
    def _teacher_pairs(self, view) -> Dict[str, Any]:
        """(prompts, z, y): the teacher's deterministic ODE outputs y from initial noise z, with its CFG."""
        from genalign.io import read_prompt_records

        gen, cfg = view.generator, view.cfg
        records = read_prompt_records(cfg.data.prompts)
        prompts = [records[i % len(records)]["prompt"] for i in range(self.regression_pairs)]
        seeds = [10_000_000 + i for i in range(self.regression_pairs)]
        zs, ys = [], []
        bs = cfg.train.rollout_batch_size
        with view.reference() as ref:
            for a in range(0, len(prompts), bs):
                ro = gen.rollout(prompts[a:a + bs], seeds[a:a + bs], cfg.sampler, num_steps=self.regression_steps,
                                 guidance_scale=self.real_guidance, stochastic=False, decode=False, model=ref)
                zs.append(ro.states[:, 0])
                ys.append(ro.states[:, -1])
        return {"prompts": prompts, "z": torch.cat(zs), "y": torch.cat(ys)}

    def regression_inputs(self, view):
        """A micro-batch of teacher pairs: (z, student first timestep, its law time, conditioning, teacher y)."""
        gen, law = view.generator, view.generator.law
        p = self.pairs
        g = torch_generator(view.cfg.train.seed, view.iteration, view.step_count("policy"), view.rank, _REG_SALT)
        idx = torch.randint(len(p["prompts"]), (self.regression_batch,), generator=g)
        pos, _ = self.conditioning(view, [p["prompts"][i] for i in idx.tolist()])
        sch = gen.schedule(view.cfg.sampler.num_steps, view.cfg.sampler.shift)
        time0 = law.schedule_times(sch)[0].to(view.device)
        return (p["z"][idx].to(view.device).float(), sch.timesteps[0], time0, pos, p["y"][idx].to(view.device))
