"""Runs one phase: its optimiser steps, each accumulating the owner's backward units over micro-batches.

The owner (the algorithm, or a learnable reward) says what it trains on and how::

    items = owner.items(view, batch)             # this process's training items (default: its sample indices)
    n = owner.units(batch, mb_items)             # backward units of a micro-batch
    for loss, stats in owner.losses(view, batch, mb_items): ...

Each optimiser step takes one chunk of the (seeded, shuffled) items, cut into ``train.train_batch_size``
micro-batches; every unit's loss is scaled by 1/(units × micro-batches) so one step averages them. Item counts may
differ across processes (DRAGON's D⁺/D⁻ members): chunks and micro-batch counts are aligned on the largest shard and
a process without items runs the owner on an empty micro-batch (the owner yields zero losses through the model so
that collectives stay aligned). Gradients synchronise on a step's last unit only.

Multi-objective steps (MARBLE): when ``owner.objectives(view) = K > 1``, the owner's losses yield K losses per unit
(``view.probe`` is True); the stepper computes the K gradients (one forward, K vector-Jacobian products, averaged
over processes), hands them to ``owner.combine(view, grads, stats)`` and applies the direction it returns — or, when
it returns None, runs an ordinary pass (the owner then uses its updated mixture).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, List

import numpy as np
import torch

from .seeding import torch_generator


def check_probe(host) -> None:
    from ..errors import ConfigError
    from .fsdp import is_fsdp

    if is_fsdp(host.accelerator):  # K gradients over sharded DTensors and their all-reduce are not implemented
        raise ConfigError("multi-objective steps (owner.objectives > 1, e.g. MARBLE) are not supported under "
                          "FSDP; train with DDP (configs/accelerate/multi_gpu.yaml)")


class Stepper:
    def __init__(self, host):
        self.host = host

    # ------------------------------------------------------------------------------------------ schedule
    def chunks(self, owner, view, items: List, salt: int):
        """Per optimiser step, the micro-batches (lists of items) of this process, aligned across processes."""
        cfg = self.host.cfg
        S, bs = cfg.train.optimizer_steps_per_iteration, cfg.train.train_batch_size
        counts = self.host.all_counts(len(items))
        m = max(counts)
        if m == 0:
            return
        n_chunks = min(S, m)
        shuffle = S > 1 or cfg.train.inner_epochs > 1 or getattr(owner, "always_shuffle", False)
        for epoch in range(cfg.train.inner_epochs):
            order = list(range(len(items)))
            if shuffle and items:
                order = torch.randperm(len(items), generator=torch_generator(
                    cfg.train.seed, self.host.iteration, epoch, self.host.rank, salt)).tolist()
            for c in range(n_chunks):
                mine = [items[order[j]] for j in np.array_split(np.arange(len(items)), n_chunks)[c]]
                n_mbs = max(1, max(-(-len(np.array_split(np.arange(k), n_chunks)[c]) // bs) for k in counts))
                yield [mine[i * bs:(i + 1) * bs] for i in range(n_mbs)]

    # ------------------------------------------------------------------------------------------ one phase
    def run(self, phase, owner, view, batch) -> Dict[str, float]:
        host = self.host
        parts = [host.parts[p] for p in phase.parts]
        stats: Dict[str, list] = {}
        losses: List[float] = []
        view.phase = phase
        for r in range(phase.repeats):
            items = owner.items(view, batch)
            for mbs in self.chunks(owner, view, items, getattr(owner, "schedule_salt", 3) + 100 * r):
                for p in parts:  # gradients another phase left in these parts (e.g. a GAN loss through the fake
                    p.optimizer.zero_grad(set_to_none=True)  # score while the generator stepped) are not ours
                K = owner.objectives(view) if hasattr(owner, "objectives") else 1
                if K > 1:
                    check_probe(host)
                    nonfinite = self.probe(owner, view, batch, mbs, parts, K, stats, losses)
                else:
                    nonfinite = self.accumulate_pass(owner, view, batch, mbs, parts, stats, losses)
                host.apply_step(parts, nonfinite, stats, phase)
        view.phase = None
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["loss"] = float(np.mean(losses)) if losses else float("nan")
        return out

    def accumulate_pass(self, owner, view, batch, mbs, parts, stats, losses) -> torch.Tensor:
        acc = self.host.accelerator
        nonfinite = torch.zeros((), device=acc.device)
        for mi, mb_items in enumerate(mbs):
            units = owner.units(batch, mb_items)
            for ui, (loss, st) in enumerate(owner.losses(view, batch, mb_items)):
                if not torch.isfinite(loss):
                    nonfinite += 1
                    loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
                last = mi == len(mbs) - 1 and ui == units - 1
                with contextlib.ExitStack() as stack:
                    if not last:
                        for p in parts:
                            stack.enter_context(acc.no_sync(p.module))
                    acc.backward(loss / (units * len(mbs)))
                if mb_items:
                    losses.append(float(loss.detach()))
                    for k, v in st.items():
                        if v == v:
                            stats.setdefault(k, []).append(float(v))
        return nonfinite

    def probe(self, owner, view, batch, mbs, parts, K, stats, losses) -> torch.Tensor:
        """K per-objective gradients → ``owner.combine`` → the step's gradient in the ``.grad`` fields."""
        acc = self.host.accelerator
        params = [p for part in parts for p in part.params]
        frac = float(getattr(owner, "probe_fraction", 1.0))
        probe_mbs = mbs
        if frac < 1.0:
            g = torch_generator(self.host.cfg.train.seed, self.host.iteration, view.step_count(parts[0].name),
                                self.host.rank, 7)
            probe_mbs = [[mb[i] for i in torch.randperm(len(mb), generator=g)[:max(1, math.ceil(frac * len(mb)))]]
                         for mb in mbs]
        grads = [[torch.zeros_like(p) for p in params] for _ in range(K)]
        nonfinite = torch.zeros((), device=acc.device)
        view.probe = True
        with contextlib.ExitStack() as stack:
            for p in parts:
                stack.enter_context(acc.no_sync(p.module))
            for mb_items in probe_mbs:
                units = owner.units(batch, mb_items)
                for loss_k, st in owner.losses(view, batch, mb_items):
                    for k, loss in enumerate(loss_k):
                        if not torch.isfinite(loss):
                            nonfinite += 1
                            loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
                        gs = torch.autograd.grad(loss / (units * len(probe_mbs)), params, retain_graph=k < K - 1,
                                                 allow_unused=True)
                        for buf, gk in zip(grads[k], gs):
                            if gk is not None:
                                buf.add_(gk.to(buf.dtype))
                    if frac >= 1.0 and mb_items:
                        losses.append(float(loss_k[0].detach()))
                        for k2, v in st.items():
                            stats.setdefault(k2, []).append(float(v))
        view.probe = False
        if self.host.world > 1 and not getattr(owner, "sharded_gradients", False):
            for gl in grads:
                for gk in gl:
                    gk.copy_(acc.reduce(gk, reduction="mean"))
        if self.host.any_process(nonfinite):
            return nonfinite
        direction = owner.combine(view, grads, stats)
        if direction is None:
            del grads
            for p in params:
                p.grad = None
            return self.accumulate_pass(owner, view, batch, mbs, parts, stats, losses)
        for p, d in zip(params, direction):
            p.grad = None if d is None else d.to(p.dtype)
        return nonfinite
