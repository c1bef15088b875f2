"""The one training loop, on accelerate. Read it top to bottom:

    for iteration:
        plan     -> the iteration's prompts and per-sample seeds (a pure function of (seed, iteration))
        rollout  -> trajectories with per-step log-probs on this process's shard
        score    -> rewards, gathered across processes (set-scope rewards score the gathered batch)
        advantage-> per-prompt group advantages on the gathered batch, then this process's slice
        update   -> optimiser steps, each accumulating over micro-batches × trained timesteps
        ema, log, evaluate (fixed prompts and seeds, deterministic sampler), checkpoint

Only this file, export and tracking touch accelerate. Everything random derives from (seed, iteration,
sample index), so a resumed run continues exactly where an uninterrupted one would be, and the rollouts
do not depend on how the global batch is split across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import Config, make_algorithm, save_config, to_dict
from .errors import CheckpointError, ConfigError
from .io import append_jsonl, atomic_write_json, read_prompts
from .models.base import Rollout, cat_cond
from .registry import ALGORITHMS, MODELS

CKPT_PREFIX = "checkpoint-"


def derive_seed(*parts: int) -> int:
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:7], "little")


def cat_rollouts(parts: List[Rollout]) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    p0 = parts[0]
    return Rollout(
        prompts=sum((p.prompts for p in parts), []),
        seeds=sum((p.seeds for p in parts), []),
        group_ids=torch.cat([p.group_ids for p in parts]),
        cond=cat_cond([p.cond for p in parts]),
        states=torch.cat([p.states for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        means=None if p0.means is None else torch.cat([p.means for p in parts]),
        train_steps=torch.cat([p.train_steps for p in parts]),
        schedule=p0.schedule,
        guidance_scale=p0.guidance_scale,
        samples=None if p0.samples is None else torch.cat([p.samples for p in parts]),
        metadata=sum((p.metadata for p in parts), []),
    )


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = cfg.run.output_dir
        self.iteration = 0
        self.optimizer_step = 0
        self.counters = {"skipped_nonfinite_reward": 0, "skipped_nonfinite_loss": 0, "trajectories": 0}
        self.elapsed = 0.0
        self.first_eval: Optional[Dict[str, float]] = None
        self.last_eval: Optional[Dict[str, float]] = None

    # ================================================================================================ setup
    def _check_output_dir(self) -> Optional[str]:
        """Return the checkpoint to resume from, or None; refuse to write over an existing run."""
        last = latest_checkpoint(self.out)
        if self.cfg.run.resume:
            if last is None and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
                raise CheckpointError(f"run.resume=true but '{self.out}' has no complete checkpoint to resume from")
            return last
        if os.path.isdir(self.out) and os.listdir(self.out) and not self.cfg.run.overwrite:
            raise ConfigError(f"output_dir '{self.out}' is not empty; pass run.resume=true to continue it or "
                              f"run.overwrite=true to start over in it")
        return None

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        cfg = self.cfg
        resume_from = self._check_output_dir()
        if cfg.run.overwrite and not cfg.run.resume and os.path.isdir(self.out):
            for name in ("metrics.jsonl", "samples", "checkpoints", "logs"):
                p = os.path.join(self.out, name)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
        trackers = [t for t in cfg.run.log_with if t != "none"]
        self.accelerator = acc = Accelerator(
            cpu=not has_accelerator_device(),  # so that torchrun/accelerate on a CPU-only host forms a gloo group
            mixed_precision=cfg.train.mixed_precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=self.out, logging_dir=os.path.join(self.out, "logs")),
        )
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(cfg.train.seed)
        self.is_main = acc.is_main_process
        self.world = acc.num_processes
        self.rank = acc.process_index
        n_global = cfg.data.prompts_per_iteration * cfg.data.group_size
        if n_global % self.world:
            raise ConfigError(f"prompts_per_iteration × group_size = {n_global} must be divisible by the number of "
                              f"processes ({self.world})")
        self.n_local = n_global // self.world

        # ---- components
        gen_cls = MODELS.get(cfg.model.family)
        self.generator = gen_cls.load(cfg.model, device=acc.device)
        from .rewards.base import build_rewards

        self.rewards = [r.to(acc.device) for r in build_rewards(cfg.rewards)]
        self.reward_names = unique_names([r.name for r in self.rewards])
        self.algorithm = make_algorithm(ALGORITHMS.get(cfg.algorithm.name), cfg.algorithm.args)
        self.algorithm.setup(self)
        self.train_prompts = read_prompts(cfg.data.prompts)
        ep = cfg.data.eval_prompts if cfg.data.eval_prompts is not None else self.train_prompts[:4]
        self.eval_prompts = read_prompts(ep)

        params = self.generator.trainable_parameters()
        if not params:
            raise ConfigError("the model has no trainable parameters (check model.lora.target_modules)")
        opt = torch.optim.AdamW(params, lr=cfg.train.learning_rate, betas=tuple(cfg.train.adam_betas),
                                weight_decay=cfg.train.weight_decay)
        warm = cfg.train.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(self.generator.denoiser, opt, sched)
        self.ema = None
        if cfg.train.ema.decay > 0:
            from .ema import EMA

            self.ema = EMA(self.generator.trainable_parameters(), cfg.train.ema.decay, cfg.train.ema.every)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

        if resume_from:
            self.load_checkpoint(resume_from)
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
            save_config(cfg, os.path.join(self.out, "config.yaml"))
            if trackers:
                acc.init_trackers(cfg.run.name or os.path.basename(os.path.abspath(self.out)),
                                  config=flatten(to_dict(cfg)))

    # ================================================================================================ planning
    def plan(self, iteration: int):
        """The iteration's global batch: prompts, group ids and per-sample seeds, identical on every process."""
        cfg = self.cfg
        rng = np.random.default_rng(derive_seed(cfg.train.seed, iteration, 1))
        k = cfg.data.prompts_per_iteration
        replace = k > len(self.train_prompts)
        chosen = rng.choice(len(self.train_prompts), size=k, replace=replace)
        prompts, groups, seeds, noise_seeds = [], [], [], []
        for gi, pi in enumerate(chosen):
            for j in range(cfg.data.group_size):
                prompts.append(self.train_prompts[int(pi)])
                groups.append(gi)
                seeds.append(derive_seed(cfg.train.seed, iteration, gi, j))
                noise_seeds.append(derive_seed(cfg.train.seed, iteration, gi, 0 if cfg.sampler.same_initial_noise else j))
        window_start = None
        T = cfg.sampler.num_steps
        if cfg.sampler.train_timesteps == "window":
            hi = max(1, int(cfg.sampler.window_range * T) - cfg.sampler.window_size + 1)
            window_start = int(rng.integers(0, hi))
        elif cfg.sampler.train_timesteps == "sliding_window":  # MixGRPO progressive: high -> low noise
            span = max(1, T - cfg.sampler.window_size)
            window_start = min(span, int(iteration * span / max(cfg.train.iterations - 1, 1)))
        return prompts, torch.tensor(groups), seeds, noise_seeds, window_start

    def train_steps_for(self, seeds: List[int], stochastic: torch.Tensor) -> torch.Tensor:
        """(n, K) indices of the trained steps of each sample (METHODS.md §3.4)."""
        s = self.cfg.sampler
        T = s.num_steps
        avail = torch.nonzero(stochastic).flatten()
        scheme = s.train_timesteps
        if scheme == "all_but_last" or scheme in ("window", "sliding_window"):
            if scheme == "all_but_last":
                avail = avail[avail < max(1, int(T * s.timestep_fraction))]
            return avail.expand(len(seeds), -1).clone()
        k = max(1, int(len(avail) * s.timestep_fraction))
        rows = []
        for sd in seeds:  # DDPO/DanceGRPO: random permutation per sample, from the sample's own seed
            g = torch.Generator().manual_seed(derive_seed(sd, 7))
            rows.append(avail[torch.randperm(len(avail), generator=g)[:k]])
        return torch.stack(rows)

    # ================================================================================================ steps
    def do_rollout(self, iteration: int):
        cfg = self.cfg
        prompts, groups, seeds, noise_seeds, window_start = self.plan(iteration)
        lo, hi = self.rank * self.n_local, (self.rank + 1) * self.n_local
        prompts, groups, seeds, noise_seeds = prompts[lo:hi], groups[lo:hi], seeds[lo:hi], noise_seeds[lo:hi]
        stochastic = self.algorithm.needs_log_probs
        mask = self.generator.stochastic_mask(cfg.sampler.num_steps, cfg.sampler, window_start)
        train_steps = self.train_steps_for(seeds, mask) if stochastic else None
        bs = cfg.train.rollout_batch_size
        parts = []
        self.model.eval()
        hook = getattr(self.algorithm, "rollout_context", None)  # e.g. DiffusionNFT samples with θ_old
        with (hook(self) if hook is not None else _null()):
            for a in range(0, len(prompts), bs):
                b = slice(a, a + bs)
                parts.append(self.generator.rollout(
                    prompts[b], seeds[b], cfg.sampler, stochastic=stochastic, group_ids=groups[b],
                    noise_seeds=noise_seeds[b], window_start=window_start,
                    train_steps=None if train_steps is None else train_steps[b],
                    store_means=self.algorithm.store_means, model=self.model,
                    **self.algorithm.rollout_kwargs(self, iteration)))
        self.model.train()
        return cat_rollouts(parts)

    def score(self, ro: Rollout):
        """(N_global, K) rewards: sample-scope rewards score locally then gather; set/group-scope ones score the
        gathered batch. Returns (per_reward_global, group_ids_global, prompts_global)."""
        acc = self.accelerator
        cols = []
        gathered_samples = None
        for r in self.rewards:
            if r.scope == "sample":
                local = r(ro.samples, ro.prompts, ro.metadata or None).to(acc.device)
                cols.append(acc.gather(local).cpu())
            else:
                if gathered_samples is None:
                    gathered_samples = acc.gather(ro.samples.to(acc.device)).cpu()
                    all_prompts = gather_list(acc, ro.prompts)
                cols.append(r(gathered_samples, all_prompts).cpu())
        groups = acc.gather(ro.group_ids.to(acc.device)).cpu()
        prompts = gather_list(acc, ro.prompts)
        return torch.stack(cols, 1).float(), groups, prompts

    def microbatch_schedule(self, n: int):
        """Yield, per optimiser step of this iteration, the micro-batch index tensors of this process's ``n``
        samples: ``inner_epochs`` passes, each split into ``optimizer_steps_per_iteration`` chunks (a seeded
        permutation when there is more than one), each chunk cut into ``train_batch_size`` micro-batches."""
        cfg = self.cfg
        S = cfg.train.optimizer_steps_per_iteration
        bs = cfg.train.train_batch_size
        for epoch in range(cfg.train.inner_epochs):
            order = torch.arange(n)
            if S > 1 or cfg.train.inner_epochs > 1:
                g = torch.Generator().manual_seed(derive_seed(cfg.train.seed, self.iteration, epoch, self.rank, 3))
                order = torch.randperm(n, generator=g)
            for chunk in [c for c in torch.tensor_split(order, S) if len(c)]:
                yield [chunk[i : i + bs] for i in range(0, len(chunk), bs)]

    def accumulate(self, loss: torch.Tensor, divisor: float, last: bool, nonfinite: torch.Tensor) -> float:
        """Backward one unit's share (loss / divisor) of an optimiser step's gradient. A non-finite loss is zeroed
        and counted in ``nonfinite`` (in place; apply_optimizer_step then skips the step); gradients synchronise
        across processes only on the step's ``last`` unit. Returns the (finite) loss value."""
        if not torch.isfinite(loss):
            nonfinite += 1
            loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
        if last:
            self.accelerator.backward(loss / divisor)
        else:
            with self.accelerator.no_sync(self.model):
                self.accelerator.backward(loss / divisor)
        return float(loss.detach())

    def backward_pass(self, ro: Rollout, mbs, adv: torch.Tensor, stats_acc: Dict[str, List[float]],
                      losses: List[float]) -> torch.Tensor:
        """One optimiser step's gradient: the algorithm's losses over micro-batches × units, averaged. Returns the
        count of non-finite losses."""
        nonfinite = torch.zeros((), device=self.accelerator.device)
        for mi, idx in enumerate(mbs):
            mb = ro.index(idx.tolist())
            units = self.algorithm.units(mb)
            for ui, (loss, st) in enumerate(self.algorithm.losses(self, mb, adv[idx])):
                losses.append(self.accumulate(loss, units * len(mbs), mi == len(mbs) - 1 and ui == units - 1,
                                              nonfinite))
                for k, v in st.items():
                    stats_acc.setdefault(k, []).append(v)
        return nonfinite

    def update(self, ro: Rollout, adv_local: torch.Tensor) -> Dict[str, float]:
        stats_acc: Dict[str, List[float]] = {}
        losses: List[float] = []
        for mbs in self.microbatch_schedule(len(ro)):
            self.apply_optimizer_step(self.backward_pass(ro, mbs, adv_local, stats_acc, losses), stats_acc)
        out = {k: float(np.mean(v)) for k, v in stats_acc.items()}
        out["loss"] = float(np.mean(losses)) if losses else float("nan")
        return out

    def apply_optimizer_step(self, nonfinite: torch.Tensor, stats_acc: Dict[str, List[float]]) -> bool:
        """Clip, step, zero grads and update the EMA — unless any process saw a non-finite loss, in which case
        the step is skipped on every process and counted. Returns whether the step was taken."""
        acc, cfg = self.accelerator, self.cfg
        if float(acc.reduce(nonfinite.reshape(1).float(), "sum").sum()) > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.counters["skipped_nonfinite_loss"] += 1
            return False
        if cfg.train.max_grad_norm > 0:
            gn = acc.clip_grad_norm_(self.generator.trainable_parameters(), cfg.train.max_grad_norm)
            stats_acc.setdefault("grad_norm", []).append(float(gn))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        if self.ema is not None:
            self.ema.step(self.optimizer_step)
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
            it = self.iteration
            t0 = time.time()
            ro = self.do_rollout(it)
            t1 = time.time()
            per_reward, groups, prompts = self.score(ro)
            t2 = time.time()
            metrics: Dict[str, Any] = {"step": it + 1}
            weights = [r.weight for r in self.rewards]
            from .algorithms.advantages import aggregate_rewards

            combined = aggregate_rewards(per_reward, weights)
            for k, name in enumerate(self.reward_names):
                col = per_reward[:, k]
                metrics[f"reward/{name}"] = float(torch.nanmean(col)) if (~torch.isnan(col)).any() else float("nan")
            finite = torch.isfinite(combined)
            metrics["reward_mean"] = float(combined[finite].mean()) if finite.any() else float("nan")
            metrics["reward_std"] = float(combined[finite].std(unbiased=False)) if finite.any() else float("nan")
            if torch.isinf(per_reward).any() or not finite.all():
                self.counters["skipped_nonfinite_reward"] += 1
                upd = {"loss": float("nan")}
            else:
                adv, adv_stats, keep = self.algorithm.advantages(per_reward, weights, groups, prompts,
                                                                 cfg.reward_aggregation)
                lo = self.rank * self.n_local
                keep_f = keep.float().reshape(-1, *([1] * (adv.ndim - 1)))
                adv_local = (adv * keep_f)[lo : lo + self.n_local]
                metrics.update({k: v for k, v in adv_stats.items() if not k.startswith("_")})
                upd = self.algorithm.update(self, ro, adv_local) if hasattr(self.algorithm, "update") else None
                if upd is None:
                    upd = self.update(ro, adv_local)
                metrics.update(self.algorithm.after_iteration(self) or {})
            t3 = time.time()
            self.counters["trajectories"] += self.n_local * self.world
            metrics.update(upd)
            for key in ("loss", "kl", "clipfrac", "approx_kl"):
                metrics.setdefault(key, float("nan") if key == "loss" else 0.0)
            metrics.update({"seconds": t3 - t0, "time/rollout": t1 - t0, "time/reward": t2 - t1,
                            "time/update": t3 - t2, "lr": self.lr_scheduler.get_last_lr()[0],
                            "optimizer_step": self.optimizer_step, **self.counters})
            self.iteration += 1
            self.elapsed = time.time() - t_start
            last = self.iteration >= cfg.train.iterations
            out_of_time = cfg.train.max_minutes > 0 and self.elapsed / 60 >= cfg.train.max_minutes
            if cfg.train.eval_every and self.iteration % cfg.train.eval_every == 0 and not (last or out_of_time):
                ev = self.evaluate(self.iteration)
                metrics.update({f"eval/{k}": v for k, v in ev.items()})
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
                   "seconds": self.elapsed}
        if self.is_main:
            atomic_write_json(os.path.join(self.out, "summary.json"), summary)
            key = "reward_mean"
            before = (self.first_eval or {}).get(key, float("nan"))
            after = self.last_eval.get(key, float("nan"))
            print(f"genalign: eval reward {before:.4f} -> {after:.4f} after {self.iteration} iterations; "
                  f"checkpoint {os.path.abspath(ckpt)}", flush=True)
        return summary

    def log(self, metrics: Dict[str, Any], jsonl: bool = True) -> None:
        if not self.is_main:
            return
        step = int(metrics.get("step", self.iteration))
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(numeric, step=step)
        if jsonl:
            append_jsonl(os.path.join(self.out, "metrics.jsonl"), metrics)

    # ================================================================================================ eval
    @torch.no_grad()
    def evaluate(self, iteration: int) -> Dict[str, float]:
        """Deterministic sampler on fixed prompts × seeds; grid PNG + samples.jsonl; mean rewards."""
        from .sampling import save_grid

        cfg, acc = self.cfg, self.accelerator
        items = [(p, s) for p in self.eval_prompts for s in cfg.data.eval_seeds]
        mine = items[self.rank :: self.world]
        self.model.eval()
        ctx = self.ema.swapped() if self.ema is not None else _null()
        outs = []
        with ctx:
            bs = cfg.train.rollout_batch_size
            for a in range(0, len(mine), bs):
                chunk = mine[a : a + bs]
                ro = self.generator.rollout([p for p, _ in chunk], [s for _, s in chunk], cfg.sampler,
                                            num_steps=cfg.sampler.eval_num_steps, stochastic=False)
                outs.append(ro.samples.cpu())
        self.model.train()
        local = torch.cat(outs) if outs else torch.zeros(0)
        from accelerate.utils import gather_object

        parts = gather_object([(mine, local)]) if self.world > 1 else [(mine, local)]
        by_item = {}
        for its, samples in parts:
            for k, it in enumerate(its):
                by_item[it] = samples[k]
        samples = torch.stack([by_item[it] for it in items])
        prompts = [p for p, _ in items]
        scores = {}
        for r, name in zip(self.rewards, self.reward_names):
            scores[name] = r(samples.to(acc.device), prompts).cpu()
        weights = [r.weight for r in self.rewards]
        from .algorithms.advantages import aggregate_rewards

        combined = aggregate_rewards(torch.stack([scores[n] for n in self.reward_names], 1), weights)
        result = {"reward_mean": float(torch.nanmean(combined))}
        for name in self.reward_names:
            result[name] = float(torch.nanmean(scores[name]))
        if self.is_main:
            fname = f"iter_{iteration:06d}.png"
            save_grid(samples, len(self.eval_prompts), len(cfg.data.eval_seeds),
                      os.path.join(self.out, "samples", fname))
            for k, (p, s) in enumerate(items):
                append_jsonl(os.path.join(self.out, "samples", "samples.jsonl"),
                             {"iteration": iteration, "prompt": p, "seed": s, "file": fname, "index": k,
                              "rewards": {n: float(scores[n][k]) for n in self.reward_names}})
        return result

    # ================================================================================================ checkpoints
    def _save_hook(self, models, weights, output_dir):
        """accelerate save hook: the denoiser is written in diffusers' format, not as a raw state dict."""
        if self.is_main:
            if self.generator.is_lora:
                self.generator.save_lora(output_dir, self.generator.lora_state_dict(self.accelerator.unwrap_model(models[0])))
            else:
                self.accelerator.unwrap_model(models[0]).save_pretrained(
                    os.path.join(output_dir, self.generator.denoiser_name), safe_serialization=True)
        while weights:  # accelerate must not also write the raw state dict
            weights.pop()

    def _load_hook(self, models, input_dir):
        model = self.accelerator.unwrap_model(models.pop())
        if self.generator.is_lora:
            self.generator.load_lora_file(input_dir, model)
        else:
            self.generator.load_full_weights(input_dir, model)

    def save_checkpoint(self) -> str:
        """Write checkpoints/checkpoint-N atomically: a temp dir renamed into place once complete."""
        from safetensors.torch import save_file

        acc = self.accelerator
        root = os.path.join(self.out, "checkpoints")
        final = os.path.join(root, f"{CKPT_PREFIX}{self.iteration}")
        tmp = os.path.join(root, f".{CKPT_PREFIX}{self.iteration}.tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(tmp, safe_serialization=True)
        if self.is_main:
            state = {"iteration": self.iteration, "optimizer_step": self.optimizer_step, "counters": self.counters,
                     "elapsed": self.elapsed, "first_eval": self.first_eval, "family": self.cfg.model.family,
                     "base_model": self.cfg.model.path, "lora": self.generator.is_lora}
            atomic_write_json(os.path.join(tmp, "trainer_state.json"), state)
            extra = {}
            if self.ema is not None:
                extra.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            extra.update({f"algorithm.{k}": v.contiguous() for k, v in self.algorithm.state_dict().items()})
            if extra:
                save_file(extra, os.path.join(tmp, "extra_state.safetensors"))
            if self.ema is not None and self.generator.is_lora:  # EMA weights as a loadable LoRA too
                with self.ema.swapped():
                    os.makedirs(os.path.join(tmp, "ema"), exist_ok=True)
                    self.generator.save_lora(os.path.join(tmp, "ema"))
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_checkpoints(root)
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self, root: str) -> None:
        keep = self.cfg.train.keep_checkpoints
        if keep <= 0:
            return
        ck = list_checkpoints(self.out)
        for path in ck[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, path: str) -> None:
        from safetensors.torch import load_file

        state_file = os.path.join(path, "trainer_state.json")
        try:
            with open(state_file) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint '{path}' is incomplete or corrupt ({e})") from None
        self.accelerator.load_state(path)
        self.iteration = int(state["iteration"])
        self.optimizer_step = int(state["optimizer_step"])
        self.counters.update(state.get("counters", {}))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.first_eval = state.get("first_eval")
        extra_file = os.path.join(path, "extra_state.safetensors")
        if os.path.exists(extra_file):
            extra = load_file(extra_file)
            if self.ema is not None:
                self.ema.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema.")})
            self.algorithm.load_state_dict({k[10:]: v for k, v in extra.items() if k.startswith("algorithm.")})
        if self.is_main:
            print(f"genalign: resumed from {path} at iteration {self.iteration}", flush=True)


# ==================================================================================================== helpers
class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def has_accelerator_device() -> bool:
    if torch.cuda.is_available():
        return True
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def list_checkpoints(out_dir: str) -> List[str]:
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        if name.startswith(CKPT_PREFIX) and name[len(CKPT_PREFIX):].isdigit():
            p = os.path.join(root, name)
            if os.path.exists(os.path.join(p, "trainer_state.json")):
                found.append((int(name[len(CKPT_PREFIX):]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str) -> Optional[str]:
    ck = list_checkpoints(out_dir)
    return ck[-1] if ck else None


def gather_list(acc, items: List[Any]) -> List[Any]:
    if acc.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def unique_names(names: List[str]) -> List[str]:
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def train(cfg: Config) -> Dict[str, Any]:
    return Trainer(cfg).train()
