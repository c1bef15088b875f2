"""Named trained parts: the module, its trainable parameters, its optimiser and LR schedule, its EMA and its step
counter. :func:`build_parts` collects the policy and whatever the algorithm and the learnable rewards declare, and
prepares each with accelerate (the policy first, so a run with only a policy is prepared exactly as before). Under
accelerate's FSDP (version 2) each part is sharded by ``fully_shard`` in place: the module keeps its identity, its
parameters become DTensor shards (``Part.params`` are the sharded ones), and checkpoints gather full state dicts
(genalign/core/fsdp.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..errors import ConfigError
from .fsdp import is_fsdp
from .phases import PartSpec


@dataclass
class Part:
    name: str
    module: torch.nn.Module  # as prepared by accelerate (possibly wrapped)
    raw: torch.nn.Module  # the module itself
    params: List[torch.nn.Parameter]
    optimizer: object
    scheduler: object
    max_grad_norm: float
    ema: Optional[object] = None
    steps: int = 0


def resolve_options(name: str, spec: PartSpec, cfg) -> dict:
    """The part's optimiser options: ``train.parts.<name>`` > the part's declared defaults > ``train.*``."""
    t = cfg.train
    over = t.parts.get(name)
    opts = {"lr": spec.lr if spec.lr is not None else t.learning_rate,
            "betas": tuple(spec.betas) if spec.betas is not None else tuple(t.adam_betas),
            "weight_decay": spec.weight_decay if spec.weight_decay is not None else t.weight_decay,
            "max_grad_norm": spec.max_grad_norm if spec.max_grad_norm is not None else t.max_grad_norm,
            "ema_decay": spec.ema_decay}
    if name == "policy":
        opts["ema_decay"] = t.ema.decay
    if over is not None:
        for key, field_name in (("lr", "learning_rate"), ("betas", "adam_betas"), ("weight_decay", "weight_decay"),
                                ("max_grad_norm", "max_grad_norm"), ("ema_decay", "ema_decay")):
            v = getattr(over, field_name)
            if v is not None:
                opts[key] = tuple(v) if key == "betas" else v
    check_options(name, opts)
    return opts


def check_options(name: str, o: dict) -> None:
    import math

    key = f"train.parts.{name}" if name != "policy" else "train"
    if not (math.isfinite(o["lr"]) and o["lr"] > 0):
        raise ConfigError(f"'{key}' learning rate must be a finite number > 0, got {o['lr']}")
    if len(o["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in o["betas"]):
        raise ConfigError(f"'{key}' adam betas must be two numbers in [0, 1), got {list(o['betas'])}")
    if o["weight_decay"] < 0 or o["max_grad_norm"] < 0:
        raise ConfigError(f"'{key}' weight decay and max grad norm must be >= 0")
    if not 0.0 <= o["ema_decay"] < 1.0:
        raise ConfigError(f"'{key}' EMA decay must be in [0, 1), got {o['ema_decay']}")


def declared_parts(algorithm, rewards, view) -> Dict[str, PartSpec]:
    """Parts declared by the algorithm and the learnable rewards, by name (a name declared twice is an error)."""
    out: Dict[str, PartSpec] = {}
    sources = [("algorithm", algorithm.declare_parts(view))]
    sources += [(f"reward '{r.name}'", r.parts()) for r in rewards if getattr(r, "learnable", False)]
    for who, specs in sources:
        for name, spec in (specs or {}).items():
            if name == "policy" or name in out:
                raise ConfigError(f"{who} declares a part named '{name}', which already exists")
            out[name] = spec
    return out


def check_distributed(acc, cfg, specs: Dict[str, PartSpec]) -> None:
    """Say when the launch asked for FSDP or DeepSpeed and accelerate gave something else (accelerate 1.16 enables
    both only on GPU-like devices: on a CPU host it silently trains with DDP); refuse DeepSpeed, and what genalign
    does not do under FSDP (EMA, FSDP version 1)."""
    import os

    for kind, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(env, "false").lower() == "true" and acc.distributed_type.name != kind and \
                acc.is_main_process:
            print(f"genalign: warning: the launch asked for {kind} but accelerate runs {acc.distributed_type.name} "
                  f"on this host ({acc.device.type}); accelerate enables {kind} on GPU-like devices only", flush=True)
    if acc.distributed_type.name == "DEEPSPEED":
        raise ConfigError("genalign's trainer does not run under DeepSpeed: accelerate steps the DeepSpeed engine "
                          "inside every backward() and keeps one engine, while genalign accumulates a phase's backward "
                          "units and steps each trained part's own optimiser; shard with FSDP "
                          "(configs/accelerate/fsdp.yaml) instead")
    if not is_fsdp(acc):
        return
    if acc.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("genalign supports FSDP version 2 only (fully_shard); set 'fsdp_version: 2' in the "
                          "accelerate config")
    with_ema = [n for n, s in specs.items() if resolve_options(n, s, cfg)["ema_decay"] > 0]
    if with_ema:
        raise ConfigError(f"EMA is not supported under FSDP (part(s) {with_ema}); set train.ema.decay / the "
                          f"part's ema_decay to 0, or train with DDP (configs/accelerate/multi_gpu.yaml)")


def fsdp_wrap_classes(acc, module: torch.nn.Module, configured) -> None:
    """FSDP2 shards each block of the classes the accelerate config names (``fsdp_transformer_layer_cls_to_wrap``)
    as its own unit; accelerate errs on a name the module lacks and keeps the first module's choice for later ones.
    Per part: the configured names this module has, else (None) the module's own ``_no_split_modules``."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = acc.state.fsdp_plugin
    policy, names = configured  # the plugin's (auto_wrap_policy, transformer_cls_names_to_wrap) before any prepare
    if policy is transformer_auto_wrap_policy or getattr(policy, "func", None) is transformer_auto_wrap_policy:
        policy = transformer_auto_wrap_policy
        present = {type(m).__name__ for m in module.modules()}
        names = [n for n in names or [] if n in present] or None
    plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = policy, names


def lr_factor(cfg, steps_per_step: int, progress: Callable[[], float]) -> Callable[[int], float]:
    """The multiplier of every part's learning rate: a linear warm-up over ``train.warmup_steps`` optimiser steps,
    times a decay that follows the run's progress (iteration / ``train.iterations``, read from ``progress``) from 1
    to ``train.lr_min_ratio`` (``train.lr_schedule``: constant | linear | cosine). Why not diffusers'
    ``get_scheduler``: it needs each optimiser's total step count, and parts step at their own rates (a DMD2 critic
    steps several times per generator step); progress in iterations is the same for all of them. The step count
    is divided by the scheduler steps per optimiser step: accelerate steps a prepared scheduler once per process
    (unless split_batches)."""
    import math

    warm, schedule, floor = cfg.train.warmup_steps, cfg.train.lr_schedule, cfg.train.lr_min_ratio

    def factor(s: int) -> float:
        w = min(1.0, (s // max(1, steps_per_step) + 1) / warm) if warm > 0 else 1.0
        p = min(max(progress(), 0.0), 1.0)
        if schedule == "linear":
            return w * (1.0 - (1.0 - floor) * p)
        if schedule == "cosine":
            return w * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))
        return w

    return factor


def build_parts(acc, cfg, generator, extra: Dict[str, PartSpec],
                progress: Callable[[], float] = lambda: 0.0) -> Dict[str, Part]:
    unknown = sorted(set(cfg.train.parts) - {"policy", *extra})
    if unknown:
        raise ConfigError(f"'train.parts' names unknown part(s) {unknown}; this run's parts: "
                          f"{', '.join(['policy', *sorted(extra)])}")
    specs = {"policy": PartSpec(generator.denoiser), **extra}
    check_distributed(acc, cfg, specs)
    fsdp = is_fsdp(acc)
    wrap = (acc.state.fsdp_plugin.auto_wrap_policy, acc.state.fsdp_plugin.transformer_cls_names_to_wrap) if fsdp \
        else None
    parts: Dict[str, Part] = {}
    for name, spec in specs.items():
        params = generator.trainable_parameters() if name == "policy" else \
            [p for p in spec.module.parameters() if p.requires_grad]
        if not params:
            hint = " (check model.lora.target_modules)" if name == "policy" else ""
            raise ConfigError(f"part '{name}' has no trainable parameters{hint}")
        o = resolve_options(name, spec, cfg)
        opt = torch.optim.AdamW(params, lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"])
        per_step = 1 if getattr(acc, "split_batches", False) else acc.num_processes  # scheduler steps per opt. step
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, per_step, progress))
        if name != "policy":
            spec.module.to(acc.device)
        if fsdp:
            fsdp_wrap_classes(acc, spec.module, wrap)
        module, opt, sched = acc.prepare(spec.module, opt, sched)
        if fsdp:  # fully_shard replaced the parameters by sharded DTensors; the optimiser holds the new ones
            params = [p for g in opt.param_groups for p in g["params"]]
        ema = None
        if o["ema_decay"] > 0:
            from ..ema import EMA

            every = cfg.train.ema.every if name == "policy" else 1
            ema = EMA(params if name != "policy" else generator.trainable_parameters(), o["ema_decay"], every)
        parts[name] = Part(name, module, spec.module, params, opt, sched, float(o["max_grad_norm"]), ema)
    if fsdp and acc.is_main_process:
        print(f"genalign: FSDP2 (fully_shard) shards {', '.join(parts)} over {acc.num_processes} processes",
              flush=True)
    return parts
