"""The one training loop, on accelerate. Read it top to bottom:

    for iteration:
        phases   -> what trains this iteration: the algorithm's phases and the learnable rewards' (parts + needs)
        plan     -> the iteration's prompts, metadata and per-sample seeds (a pure function of (seed, iteration))
        rollout  -> trajectories (with per-step log-probs when a phase needs them) on this process's shard
        rewards  -> learnable rewards train on the rollout; then scores, gathered across processes, and advantages
        phases   -> each phase's optimiser steps for its parts (genalign.core.stepper)
        ema, log, evaluate (fixed prompts and seeds, deterministic sampler), checkpoint

Only this file, genalign/core (parts, stepper, checkpoints), export and tracking touch accelerate. Algorithms and
rewards see a narrow :class:`~genalign.core.view.View`. Everything random derives from (seed, iteration, sample
index), so a resumed run continues exactly where an uninterrupted one would be, and rollouts do not depend on how
the global batch is split across processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, List, Optional

import torch

from .config import Config, make_algorithm, save_config, to_dict
from .core.checkpoint import Checkpointer, latest_checkpoint, list_checkpoints  # noqa: F401  (re-exported)
from .core.checkpoint import previous_run_state, set_aside_previous_run
from .core.fsdp import is_fsdp
from .core.parts import build_parts, declared_parts
from .core.phases import Batch, Phase
from .core.planning import plan, train_steps_for
from .core.stepper import Stepper
from .core.view import View
from .errors import CheckpointError, ConfigError
from .evaluation import unique_names
from .io import append_jsonl, atomic_write_json, read_prompt_records, read_prompts
from .core.hostmem import tune_host_malloc
from .core.util import cat_rollouts, flatten, gather_list, has_accelerator_device
from .models.base import Rollout
from .registry import ALGORITHMS, MODELS


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = cfg.run.output_dir
        self.iteration = 0
        self.counters = {"skipped_nonfinite_reward": 0, "skipped_nonfinite_loss": 0, "trajectories": 0}
        self._gathered: Optional[tuple] = None  # (local samples, the same from every process): see gathered_samples
        self.elapsed = 0.0
        self.first_eval: Optional[Dict[str, float]] = None
        self.last_eval: Optional[Dict[str, float]] = None

    @property
    def optimizer_step(self) -> int:
        return self.parts["policy"].steps

    # ================================================================================================ setup
    def _check_output_dir(self) -> Optional[str]:
        """Return the checkpoint to resume from, or None; refuse to write over an existing run."""
        last = latest_checkpoint(self.out)
        if self.cfg.run.resume:
            if last is None and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
                raise CheckpointError(f"run.resume=true but '{self.out}' has no complete checkpoint to resume from")
            return last
        if previous_run_state(self.out) == "run" and not self.cfg.run.overwrite:
            raise ConfigError(f"output_dir '{self.out}' is not empty; pass run.resume=true to continue it or "
                              f"run.overwrite=true to start over in it")
        return None

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        cfg = self.cfg
        resume_from = self._check_output_dir()
        trackers = [t for t in cfg.run.log_with if t != "none"]
        self.accelerator = acc = Accelerator(
            cpu=not has_accelerator_device(),  # so that torchrun/accelerate on a CPU-only host forms a gloo group
            mixed_precision=cfg.train.mixed_precision, log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=self.out, logging_dir=os.path.join(self.out, "logs")))
        if not cfg.run.resume and acc.is_main_process:  # kept until this run's first checkpoint exists
            set_aside_previous_run(self.out)
        acc.wait_for_everyone()
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        tune_host_malloc(cfg.train.host_malloc, on_accelerator=acc.device.type != "cpu")
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(cfg.train.seed)
        self.is_main, self.world, self.rank = acc.is_main_process, acc.num_processes, acc.process_index
        self.device = acc.device
        n_global = cfg.data.prompts_per_iteration * cfg.data.group_size
        if n_global % self.world:
            raise ConfigError(f"prompts_per_iteration × group_size = {n_global} must be divisible by the number of "
                              f"processes ({self.world})")
        self.n_local = n_global // self.world

        self.generator = MODELS.get(cfg.model.family).load(cfg.model, device=acc.device)
        from .rewards.base import build_rewards

        self.rewards = [r.to(acc.device) for r in build_rewards(cfg.rewards)]
        self.reward_names = unique_names([r.name for r in self.rewards])
        self.algorithm = make_algorithm(ALGORITHMS.get(cfg.algorithm.name), cfg.algorithm.args)
        self.view = View(self)
        self.parts: Dict[str, Any] = {}
        self.algorithm.setup(self.view)
        self.parts = build_parts(acc, cfg, self.generator, declared_parts(self.algorithm, self.rewards, self.view),
                                 progress=lambda: self.iteration / max(1, cfg.train.iterations))
        self.model = self.parts["policy"].module
        self.algorithm.after_parts(self.view)
        self.train_records = read_prompt_records(cfg.data.prompts)
        ep = cfg.data.eval_prompts if cfg.data.eval_prompts is not None else [r["prompt"] for r in
                                                                              self.train_records[:4]]
        self.eval_prompts = read_prompts(ep)
        self.real = None
        if cfg.data.real:
            from .core.realdata import RealData

            self.real = RealData(cfg.data.real, cfg.train.seed, (cfg.model.height, cfg.model.width))
        self.stepper = Stepper(self)
        self.checkpointer = Checkpointer(self)
        if resume_from:
            self.checkpointer.load(resume_from)
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
            save_config(cfg, os.path.join(self.out, "config.yaml"))
            if trackers:
                acc.init_trackers(cfg.run.name or os.path.basename(os.path.abspath(self.out)),
                                  config=flatten(to_dict(cfg)))

    # ================================================================================================ one iteration
    def phases_for(self, iteration: int):
        """[(phase, owner)]: the learnable rewards' phases first (they train on the rollout before scoring it),
        then the algorithm's; exclusive phases, when any, run alone."""
        out = [(ph, r) for r in self.rewards if getattr(r, "learnable", False) for ph in r.phases(iteration)]
        out += [(ph, self.algorithm) for ph in self.algorithm.phases(iteration)]
        excl = [(ph, o) for ph, o in out if ph.exclusive]
        return excl or out

    def do_rollout(self, iteration: int, with_log_probs: Optional[bool] = None) -> Rollout:
        cfg = self.cfg
        with_log_probs = self.algorithm.needs_log_probs if with_log_probs is None else with_log_probs
        p = plan(cfg, self.train_records, iteration).shard(self.rank * self.n_local, (self.rank + 1) * self.n_local)
        mask = self.generator.stochastic_mask(cfg.sampler.num_steps, cfg.sampler, p.window_start)
        train_steps = train_steps_for(cfg.sampler, p.seeds, mask) if with_log_probs else None
        bs = cfg.train.rollout_batch_size
        outs = []
        self.model.eval()
        with self.algorithm.sampling_policy(self.view):
            for a in range(0, len(p.prompts), bs):
                b = slice(a, a + bs)
                outs.append(self.generator.rollout(
                    p.prompts[b], p.seeds[b], cfg.sampler, stochastic=with_log_probs, group_ids=p.group_ids[b],
                    noise_seeds=p.noise_seeds[b], window_start=p.window_start,
                    train_steps=None if train_steps is None else train_steps[b],
                    store_means=self.algorithm.store_means, model=self.model, metadata=p.metadata[b],
                    **self.algorithm.rollout_kwargs(self.view, iteration)))
        self.model.train()
        return cat_rollouts(outs)

    def score(self, ro: Rollout):
        """(N_global, K) rewards: sample-scope rewards score locally then gather; set/group-scope ones score the
        gathered batch. Returns (per_reward_global, group_ids_global, prompts_global)."""
        acc = self.accelerator
        prompts = gather_list(acc, ro.prompts)
        metadata = gather_list(acc, ro.metadata) if ro.metadata else None
        cols = []
        for r in self.rewards:
            if r.scope == "sample":
                cols.append(acc.gather(r(ro.samples, ro.prompts, ro.metadata or None).to(acc.device)).cpu())
            else:
                cols.append(r(self.gathered_samples(ro), prompts, metadata).cpu())
        groups = acc.gather(ro.group_ids.to(acc.device)).cpu()
        return torch.stack(cols, 1).float(), groups, prompts

    def gathered_samples(self, ro: Rollout) -> torch.Tensor:
        """This rollout's samples from every process (on the CPU), gathered once per rollout however many set-scope
        rewards, monitors and algorithms (DRAGON's set split, through ``view.gathered_samples``) read them."""
        if self._gathered is None or self._gathered[0] is not ro.samples:
            self._gathered = (ro.samples, self.accelerator.gather(ro.samples.to(self.device)).cpu())
        return self._gathered[1]

    def reward_monitors(self, ro: Rollout) -> Dict[str, float]:
        """The ``monitors(samples, prompts, metadata)`` of rewards with ``monitor`` set (e.g. a discriminator's
        accuracy) on this iteration's gathered generations, after their phases; computed on the main process only."""
        rs = [(r, n) for r, n in zip(self.rewards, self.reward_names) if getattr(r, "monitor", False)]
        if not rs:
            return {}
        acc = self.accelerator
        x, prompts = self.gathered_samples(ro), gather_list(acc, ro.prompts)
        meta = gather_list(acc, ro.metadata) if ro.metadata else None
        if not self.is_main and not is_fsdp(acc):  # under FSDP a monitor's forward of a sharded part is collective
            return {}
        out = {f"monitor/{n}/{k}": v for r, n in rs for k, v in r.monitors(x, prompts, meta).items()}
        return out if self.is_main else {}

    def iterate(self, it: int) -> Dict[str, Any]:
        from .algorithms.advantages import aggregate_rewards

        phases = self.phases_for(it)
        needs = set().union(*(ph.needs for ph, _ in phases)) if phases else set()
        t0 = time.time()
        batch = Batch(iteration=it)
        if needs & {"rollout", "log_probs", "rewards"}:
            batch.rollout = self.do_rollout(it, "log_probs" in needs)
            self.counters["trajectories"] += self.n_local * self.world
        if "real" in needs:
            if self.real is None:
                raise ConfigError("a phase of this run needs real data; set 'data.real' (an image folder, a "
                                  ".safetensors file or toy:digits)")
            batch.real = self.real.batch(it, self.cfg.data.real_batch_size or self.n_local, self.rank)
        t1 = time.time()
        metrics: Dict[str, Any] = {"step": it + 1}
        train_ok = True
        for ph, owner in [(ph, o) for ph, o in phases if o is not self.algorithm]:
            metrics.update({f"{ph.name}/{k}": v for k, v in self.stepper.run(ph, owner, self.view, batch).items()})
        if self.rewards and batch.rollout is not None:
            per_reward, groups, prompts = self.score(batch.rollout)
            weights = [r.weight for r in self.rewards]
            combined = aggregate_rewards(per_reward, weights)
            for k, name in enumerate(self.reward_names):
                col = per_reward[:, k]
                metrics[f"reward/{name}"] = float(torch.nanmean(col)) if (~torch.isnan(col)).any() else float("nan")
            finite = torch.isfinite(combined)
            metrics["reward_mean"] = float(combined[finite].mean()) if finite.any() else float("nan")
            metrics["reward_std"] = float(combined[finite].std(unbiased=False)) if finite.any() else float("nan")
            metrics.update(self.reward_monitors(batch.rollout))
            if "rewards" in needs:
                nan = torch.isnan(combined)  # no reward applies: out of the group statistics and of the loss
                metrics["nan_reward_samples"] = int(nan.sum())
                if torch.isinf(per_reward).any() or nan.all():
                    self.counters["skipped_nonfinite_reward"] += 1
                    train_ok = False
                else:
                    adv, adv_stats, keep = self.algorithm.advantages(per_reward, weights, groups, prompts,
                                                                     self.cfg.reward_aggregation)
                    keep = keep & ~nan
                    lo = self.rank * self.n_local
                    batch.valid = keep[lo:lo + self.n_local]  # out of the update: NaN rewards, unkept samples
                    keep_f = keep.float().reshape(-1, *([1] * (adv.ndim - 1)))
                    batch.adv = (adv * keep_f)[lo:lo + self.n_local]
                    batch.per_reward, batch.group_ids, batch.prompts, batch.weights = per_reward, groups, prompts, \
                        weights
                    metrics.update({k: v for k, v in adv_stats.items() if not k.startswith("_")})
        t2 = time.time()
        upd: Dict[str, Any] = {"loss": float("nan")}
        if train_ok:
            for ph, owner in [(ph, o) for ph, o in phases if o is self.algorithm]:
                st = self.stepper.run(ph, owner, self.view, batch)
                upd.update(st if ph.parts == ("policy",) else {f"{ph.name}/{k}": v for k, v in st.items()})
            if any(o is self.algorithm for _, o in phases):
                upd.update(self.algorithm.after_iteration(self.view) or {})
        t3 = time.time()
        metrics.update(upd)
        for key in ("loss", "kl", "clipfrac", "approx_kl"):
            metrics.setdefault(key, float("nan") if key == "loss" else 0.0)
        metrics.setdefault("reward_mean", float("nan"))
        metrics.update({"seconds": t3 - t0, "time/rollout": t1 - t0, "time/reward": t2 - t1, "time/update": t3 - t2,
                        "lr": self.parts["policy"].scheduler.get_last_lr()[0], "optimizer_step": self.optimizer_step,
                        **self.counters})
        self._gathered = None
        return metrics

    # ================================================================================================ stepping
    def all_counts(self, n: int) -> List[int]:
        if self.world == 1:
            return [n]
        t = self.accelerator.gather(torch.tensor([n], device=self.device))
        return [int(v) for v in t.cpu()]

    def any_process(self, flag: torch.Tensor) -> bool:
        return float(self.accelerator.reduce(flag.reshape(1).float(), "sum").sum()) > 0

    def apply_step(self, parts, nonfinite: torch.Tensor, stats: Dict[str, list], phase: Phase) -> bool:
        """Clip, step, zero grads and update the EMA of each part — unless any process saw a non-finite loss, in
        which case the step is skipped on every process and counted. Returns whether the step was taken."""
        if self.any_process(nonfinite):
            for p in parts:
                p.optimizer.zero_grad(set_to_none=True)
            self.counters["skipped_nonfinite_loss"] += 1
            return False
        for p in parts:
            if p.max_grad_norm > 0:
                gn = self.accelerator.clip_grad_norm_(p.params, p.max_grad_norm)
                stats.setdefault("grad_norm" if p.name == "policy" else f"grad_norm/{p.name}", []).append(float(gn))
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
            p.steps += 1
            if p.ema is not None:
                p.ema.step(p.steps)
        return True

    # ================================================================================================ loop
    def train(self) -> Dict[str, Any]:
        from tqdm.auto import tqdm

        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            print(f"genalign: run directory {os.path.abspath(self.out)}", flush=True)
        if self.iteration == 0 and self.first_eval is None:
            self.first_eval = self.evaluate(0)
        bar = tqdm(total=cfg.train.iterations, initial=self.iteration, disable=not (self.is_main and cfg.run.progress),
                   desc="train", dynamic_ncols=True)
        t_start = time.time() - self.elapsed
        while self.iteration < cfg.train.iterations:
            metrics = self.iterate(self.iteration)
            self.iteration += 1
            self.elapsed = time.time() - t_start
            last = self.iteration >= cfg.train.iterations
            out_of_time = cfg.train.max_minutes > 0 and self.elapsed / 60 >= cfg.train.max_minutes
            if cfg.train.eval_every and self.iteration % cfg.train.eval_every == 0 and not (last or out_of_time):
                metrics.update({f"eval/{k}": v for k, v in self.evaluate(self.iteration).items()})
            self.log(metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:.2e}")
            if cfg.train.save_every and self.iteration % cfg.train.save_every == 0 and not last:
                self.save_checkpoint()
            if out_of_time:
                if self.is_main:
                    print(f"genalign: stopping after {self.elapsed / 60:.1f} minutes (train.max_minutes)", flush=True)
                break
        bar.close()
        self.last_eval = self.evaluate(self.iteration)
        self.log({"step": self.iteration, **{f"eval/{k}": v for k, v in self.last_eval.items()}}, jsonl=False)
        ckpt = self.save_checkpoint()
        acc.end_training()
        summary = {"first_eval": self.first_eval, "last_eval": self.last_eval, "checkpoint": ckpt,
                   "iterations": self.iteration, "trajectories": self.counters["trajectories"],
                   "seconds": self.elapsed, "part_steps": {n: p.steps for n, p in self.parts.items()},
                   "counters": dict(self.counters)}
        if self.is_main:
            summary["report"] = self.write_report()
            atomic_write_json(os.path.join(self.out, "summary.json"), summary)
            before = (self.first_eval or {}).get("reward_mean", float("nan"))
            after = self.last_eval.get("reward_mean", float("nan"))
            head = (f"eval reward {before:.4f} -> {after:.4f}" if self.rewards else "trained without rewards")
            report = f"; report {os.path.abspath(summary['report'])}" if summary["report"] else ""
            print(f"genalign: {head} after {self.iteration} iterations; checkpoint {os.path.abspath(ckpt)}{report}",
                  flush=True)
        return summary

    def log(self, metrics: Dict[str, Any], jsonl: bool = True) -> None:
        if not self.is_main:
            return
        step = int(metrics.get("step", self.iteration))
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(numeric, step=step)
        if jsonl:
            append_jsonl(os.path.join(self.out, "metrics.jsonl"), metrics)

    def write_report(self) -> Optional[str]:
        """The run at a glance (curves + first/last evaluation grids); a failure to draw never fails the run."""
        from .report import write_report

        try:
            return write_report(self.out)
        except Exception as e:  # noqa: BLE001 - e.g. a matplotlib backend problem
            print(f"genalign: no report ({type(e).__name__}: {e})", flush=True)
            return None

    # ================================================================================================ eval
    @torch.no_grad()
    def evaluate(self, iteration: int) -> Dict[str, float]:
        """Deterministic sampler on fixed prompts × seeds (sharded over processes, EMA weights when kept); media
        + samples.jsonl on the main process; mean rewards."""
        from .core.evalrun import evaluate_items

        ema = self.parts["policy"].ema
        self.model.eval()
        with (ema.swapped() if ema is not None else contextlib.nullcontext()):
            result = evaluate_items(self, iteration)
        self.model.train()
        return result

    # ================================================================================================ checkpoints
    def save_checkpoint(self) -> str:
        return self.checkpointer.save()

    def load_checkpoint(self, path: str) -> None:
        self.checkpointer.load(path)


def train(cfg: Config) -> Dict[str, Any]:
    return Trainer(cfg).train()
