"""DiffusionNFT as a genalign algorithm (METHODS.md §4): the soft old policy, training points drawn per
sample, the loss of :mod:`genalign.losses.nft` through the noise law."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple  # noqa: F401

import torch

from genalign.errors import ConfigError, GenalignError, choices  # noqa: F401
from genalign.losses.nft import (  # noqa: F401  (the pure parts, re-exported)
    DECAY_TYPES,
    KL_SPACES,
    _mean_nonbatch,
    nft_optimality,
    _adaptive_sq_error,
    nft_policy_loss_x0,
    nft_loss,
    nft_loss_vp,
    nft_loss_law,
    old_policy_decay,
    ema_update_,
)

# Everything below wires the pure functions above into genalign's trainer through the narrow view
# (genalign/core/view.py): view.generator, view.predict, view.reference(), view.parameters(), view.step_count().

import contextlib
from dataclasses import dataclass, field
from typing import Any

from genalign.algorithms.advantages import combined_advantages
from genalign.algorithms.base import Algorithm
from genalign.registry import ALGORITHMS

TIMESTEP_SAMPLING = ("schedule", "uniform")
ADV_STDS = ("global", "group", "batch")


from genalign.core.seeding import derive_seed as point_seed


@dataclass
class TrainingPoint:
    """Noisy training inputs for one backward unit: x_t from the clean x0 with fresh noise.

    ``t_model`` (N,) is what the denoiser is called with; ``time`` (N,) is the noise law's time (``Generator.law``):
    σ (flow) or ᾱ (VP)."""

    x0: torch.Tensor
    x_t: torch.Tensor
    noise: torch.Tensor
    t_model: torch.Tensor
    time: torch.Tensor


def training_point(gen, schedule, x0: torch.Tensor, seeds: List[int], unit: int, epoch: int = 0,
                   sampling: str = "schedule", t_min: float = 0.0, t_max: float = 1.0) -> TrainingPoint:
    """Draw per-sample timesteps and fresh noise, deterministically from each sample's seed, the unit index and
    the epoch (so a sample gets the same point however the batch is split, and MARBLE's per-reward passes see
    identical inputs).

    ``sampling="schedule"``: unit u of sample i uses step perm_i[u mod T] of the rollout's own schedule (a
    per-sample random permutation, so units cover distinct steps: DiffusionNFT trains at the sampler's
    timesteps). ``"uniform"``: the law's ``sample_training_time`` — flow σ ~ U[t_min, t_max] (timestep 1000·σ); VP:
    a discrete training timestep drawn uniformly from [t_min·N, t_max·N) of the scheduler's N training steps (ᾱ
    from its table).
    """
    n = x0.shape[0]
    dev = x0.device
    idx, u01 = [], []
    T = schedule.num_steps
    for s in seeds:
        g = torch.Generator().manual_seed(point_seed(s, epoch, 17))
        perm = torch.randperm(T, generator=g)
        idx.append(int(perm[unit % T]))
        gu = torch.Generator().manual_seed(point_seed(s, epoch, unit, 19))
        u01.append(float(torch.rand((), generator=gu)))
    noise = torch.stack([
        torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(point_seed(s, epoch, unit, 23)))
        for s in seeds
    ]).to(dev)
    x0 = x0.float()
    if sampling == "schedule":
        j = torch.tensor(idx)
        t_model = schedule.timesteps[j].float()
        time = gen.law.schedule_times(schedule)[j].float()
    else:
        time, t_model = gen.law.sample_training_time(torch.tensor(u01), t_min, t_max)
    time = time.to(dev)
    x_t = gen.law.interpolate(x0, noise, time)
    assert x_t.shape[0] == n
    return TrainingPoint(x0=x0, x_t=x_t, noise=noise, t_model=t_model.to(dev), time=time)


def _floats(stats: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


@ALGORITHMS.register("nft")
@dataclass
class NFT(Algorithm):
    """DiffusionNFT (arXiv 2509.16117; METHODS.md §4) as a genalign algorithm.

    Rollouts: deterministic (ODE / DDIM-η=0), CFG-free by default, sampled by the soft *old* policy θ_old (an EMA
    of the adapter weights kept as a list of tensors and swapped into the trainable parameters under no_grad);
    only the clean x0 and its reward are kept. Training: per trained timestep (a backward unit), fresh noise and
    the loss of :func:`nft_loss` (rectified flow) or :func:`nft_loss_vp` (VP models), with v_old from θ_old and
    v_ref from the adapter-disabled base when ``ref_weight > 0``. After each iteration θ_old ← d·θ_old + (1−d)·θ
    with d from :func:`old_policy_decay`.
    """

    needs_log_probs = False

    beta: float = field(default=1.0, metadata={"help": "NFT guidance strength β (1.0; 0.1 for OCR/multi-reward)."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "A_max: advantage clip and loss scale."})
    adv_std: str = field(default="global", metadata={"help": "Advantage std over: global | group | batch."})
    adv_eps: float = field(default=1e-4, metadata={"help": "Epsilon added to the advantage std."})
    ref_weight: float = field(default=1e-4, metadata={"help": "λ of λ·mean(v_θ − v_ref)² (0 = no reference)."})
    kl_space: str = field(default="flow", metadata={"help": "VP models: reference term on flow velocities | native."})
    decay_type: int = field(default=1, metadata={"help": "Old-policy decay schedule: 0 (θ_old=θ) | 1 | 2 (OCR)."})
    timestep_sampling: str = field(default="schedule", metadata={"help": "Trained timesteps: schedule | uniform."})
    timestep_fraction: float = field(default=0.99, metadata={"help": "Trained units = max(1, int(T·fraction))."})
    num_train_timesteps: Optional[int] = field(default=None, metadata={"help": "Trained units per sample (overrides the fraction)."})
    t_min: float = field(default=0.0, metadata={"help": "timestep_sampling=uniform: lower time bound in [0, 1]."})
    t_max: float = field(default=1.0, metadata={"help": "timestep_sampling=uniform: upper time bound in [0, 1]."})
    rollout_guidance_scale: Optional[float] = field(default=1.0, metadata={"help": "CFG of rollouts (1 = CFG-free; null = sampler's)."})
    rollout_steps: Optional[int] = field(default=None, metadata={"help": "Rollout steps (null = sampler.num_steps)."})
    min_weight: float = field(default=1e-5, metadata={"help": "Floor of the adaptive loss weight."})

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"'algorithm.beta' must be > 0, got {self.beta}")
        if self.adv_clip_max <= 0:
            raise ConfigError(f"'algorithm.adv_clip_max' must be > 0, got {self.adv_clip_max}")
        if self.adv_std not in ADV_STDS:
            raise ConfigError(f"'algorithm.adv_std' is '{self.adv_std}'; valid choices: {choices(ADV_STDS)}")
        if self.ref_weight < 0:
            raise ConfigError(f"'algorithm.ref_weight' must be >= 0, got {self.ref_weight}")
        if self.kl_space not in KL_SPACES:
            raise ConfigError(f"'algorithm.kl_space' is '{self.kl_space}'; valid choices: {choices(KL_SPACES)}")
        if self.decay_type not in DECAY_TYPES:
            raise ConfigError(f"'algorithm.decay_type' is {self.decay_type}; valid choices: {choices(DECAY_TYPES)}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ConfigError(f"'algorithm.timestep_sampling' is '{self.timestep_sampling}'; valid choices: "
                              f"{choices(TIMESTEP_SAMPLING)}")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ConfigError(f"'algorithm.timestep_fraction' must be in (0, 1], got {self.timestep_fraction}")
        if self.num_train_timesteps is not None and self.num_train_timesteps < 1:
            raise ConfigError(f"'algorithm.num_train_timesteps' must be >= 1, got {self.num_train_timesteps}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ConfigError(f"'algorithm.t_min'/'t_max' must satisfy 0 <= t_min < t_max <= 1, got "
                              f"{self.t_min}, {self.t_max}")
        if self.rollout_steps is not None and self.rollout_steps < 1:
            raise ConfigError(f"'algorithm.rollout_steps' must be >= 1, got {self.rollout_steps}")
        self._old: Optional[List[torch.Tensor]] = None
        self._synced_at: int = -1  # optimiser step at which θ_old was last set exactly equal to θ
        self._backup: Optional[List[torch.Tensor]] = None  # θ while θ_old is swapped in for sampling
        self._epoch = 0

    # -------------------------------------------------------------------------------- old policy
    def setup(self, view) -> None:
        if self.ref_weight > 0:
            view.generator.make_reference()

    def after_parts(self, view) -> None:
        self._params = view.parameters("policy")
        self._old = [p.detach().clone().float() for p in self._params]
        self._synced_at = 0

    def _old_is_current(self, view) -> bool:
        return self._synced_at == view.step_count("policy") and self._backup is None

    @torch.no_grad()
    def _load_into_params(self, tensors) -> None:
        for p, t in zip(self._params, tensors):
            p.copy_(t.to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def old_policy(self, view):
        """Within the block the trainable parameters hold θ_old (no copy when θ_old == θ)."""
        if self._old_is_current(view) or self._backup is not None:
            yield
            return
        self._backup = [p.detach().clone() for p in self._params]
        self._load_into_params(self._old)
        try:
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._backup is not None:
            self._load_into_params(self._backup)
            self._backup = None

    def sampling_policy(self, view):
        """Rollouts sample with θ_old (DiffusionNFT's soft old policy)."""
        return self.old_policy(view)

    def rollout_kwargs(self, view, iteration: int) -> Dict[str, Any]:
        kw: Dict[str, Any] = {}
        if self.rollout_guidance_scale is not None:
            kw["guidance_scale"] = float(self.rollout_guidance_scale)
        if self.rollout_steps is not None:
            kw["num_steps"] = int(self.rollout_steps)
        return kw

    def after_iteration(self, view) -> Dict[str, float]:
        self._restore()
        step = view.step_count("policy")
        d = old_policy_decay(step, self.decay_type)
        ema_update_(self._old, self._params, d)
        if d == 0.0:
            self._synced_at = step
        self._epoch += 1
        return {"nft/old_decay": d}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        self._restore()
        sd = {f"old.{i}": t.detach().cpu() for i, t in enumerate(self._old or [])}
        sd["synced_at"] = torch.tensor(self._synced_at)
        sd["epoch"] = torch.tensor(self._epoch)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if self._old is None:
            raise GenalignError("NFT state loaded before setup()")
        olds = [k for k in sd if k.startswith("old.")]
        if len(olds) != len(self._old):
            raise GenalignError(f"NFT old-policy state has {len(olds)} tensors, this model has {len(self._old)}")
        for i in range(len(self._old)):
            t = sd[f"old.{i}"]
            if t.shape != self._old[i].shape:
                raise GenalignError(f"NFT old-policy tensor {i} has shape {tuple(t.shape)}, expected "
                                    f"{tuple(self._old[i].shape)}")
            self._old[i].copy_(t)
        self._synced_at = int(sd.get("synced_at", torch.tensor(-1)))
        self._epoch = int(sd.get("epoch", torch.tensor(0)))

    # -------------------------------------------------------------------------------- advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        self._restore()
        adv, st = combined_advantages(per_reward, weights, group_ids, mode=mode, std=self.adv_std, eps=self.adv_eps,
                                      clip=self.adv_clip_max)
        stats = {"zero_std_ratio": st["zero_std_ratio"], "group_std": st["group_std"]}
        return adv, stats, torch.ones(adv.shape[0], dtype=torch.bool)

    # -------------------------------------------------------------------------------- loss
    def units(self, batch, items) -> int:
        if self.num_train_timesteps is not None:
            return int(self.num_train_timesteps)
        return max(1, int(batch.rollout.schedule.num_steps * self.timestep_fraction))

    def predictions(self, view, mb, unit: int, cache: Optional[dict] = None):
        """(point, pred_θ with grad, pred_old, pred_ref or None) for one backward unit of micro-batch ``mb``.

        Old and reference forwards run first (no_grad), before the graph of pred_θ exists. ``cache`` (a dict)
        keeps (pred_old, pred_ref) keyed by the micro-batch seeds and unit, for repeated passes."""
        self._restore()
        gen = view.generator
        x0 = mb.states[:, -1].to(gen.device)
        pt = training_point(gen, mb.schedule, x0, mb.seeds, unit, self._epoch, self.timestep_sampling,
                            self.t_min, self.t_max)
        key = (tuple(mb.seeds), unit)
        same = self._old_is_current(view)
        if cache is not None and key in cache:
            pred_old, pred_ref = cache[key]
        else:
            pred_old = pred_ref = None
            with torch.no_grad():
                if not same:
                    with self.old_policy(view):
                        pred_old = view.predict(pt.x_t, pt.t_model, mb.cond, 1.0).detach()
                if self.ref_weight > 0:
                    with view.reference() as ref:
                        pred_ref = gen.predict(ref, pt.x_t, pt.t_model, mb.cond, 1.0).detach()
        pred = view.predict(pt.x_t, pt.t_model, mb.cond, 1.0)
        if pred_old is None:
            pred_old = pred.detach()
        if cache is not None:
            cache[key] = (pred_old, pred_ref)
        return pt, pred, pred_old, pred_ref

    def loss_from(self, view, pt: TrainingPoint, pred, pred_old, pred_ref, r: torch.Tensor):
        r = r.to(pred.device)
        return nft_loss_law(view.law, pred, pred_old, pt.x0, pt.x_t, pt.time, r, self.beta,
                            adv_clip_max=self.adv_clip_max, pred_ref=pred_ref, ref_weight=self.ref_weight,
                            kl_space=self.kl_space, min_weight=self.min_weight)

    def optimality(self, adv: torch.Tensor, probe: bool) -> List[torch.Tensor]:
        """The optimality probabilities r the loss trains on: one, or one per objective when probing."""
        return [nft_optimality(adv, self.adv_clip_max)]

    def losses(self, view, batch, items):
        mb, adv = self.minibatch(batch, items)
        probe = getattr(view, "probe", False)
        rs = self.optimality(adv, probe)
        for u in range(self.units(batch, items)):
            pt, pred, pred_old, pred_ref = self.predictions(view, mb, u)
            out = []
            for r in rs:
                loss, st = self.loss_from(view, pt, pred, pred_old, pred_ref, r)
                out.append(loss)
                if len(out) == 1:
                    st = _floats(st)
                    st["kl"] = st.pop("kl_loss")
                    first = st
            yield (out if probe else out[0]), first
