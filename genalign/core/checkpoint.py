"""Checkpoints: every part's weights, optimiser, scheduler and EMA, the algorithm's and the learnable rewards'
state, RNG and data position. ``checkpoints/checkpoint-N`` is written to a temporary folder and renamed into place
once complete; the policy is written in diffusers' layout (a LoRA file ``pipe.load_lora_weights`` reads, or the
denoiser folder of a full fine-tune), other parts as ``parts/<name>.safetensors``. Under FSDP the same files are
written from gathered full state dicts (genalign/core/fsdp.py)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import List, Optional

from ..errors import CheckpointError, GenalignError
from ..io import atomic_write_json, replace_directory, umask_modes

CKPT_PREFIX = "checkpoint-"


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


# What a training run writes into its output_dir (anything else there is the user's and is never moved).
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "report.png", "samples", "checkpoints", "logs")
UNSTARTED_ENTRIES = ("config.yaml", "samples", "logs")  # what a run leaves before its first iteration ends
PREVIOUS = ".genalign-previous-"  # a previous run set aside by overwrite, until the new run's first checkpoint


def previous_run_state(out: str) -> str:
    """``"empty"`` (no folder, or nothing in it but runs set aside), ``"unstarted"`` (only what a run that failed
    before finishing an iteration leaves: config.yaml, first evaluation samples, logs) or ``"run"``."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise CheckpointError(f"output_dir '{out}' is a file, not a folder")
        return "empty"
    names = [n for n in os.listdir(out) if not n.startswith(PREVIOUS)]
    if not names:
        return "empty"
    return "unstarted" if set(names) <= set(UNSTARTED_ENTRIES) else "run"


def set_aside_previous_run(out: str) -> Optional[str]:
    """Move a previous run's own entries (RUN_ENTRIES; the user's other files stay) into
    ``<out>/.genalign-previous-<time>/``, each by one atomic rename: nothing is deleted before this run has a
    checkpoint (:func:`drop_previous_runs`), so a crash in its first iteration loses nothing."""
    if previous_run_state(out) == "empty":
        return None
    # mkdtemp: a unique name even when one process sets two runs aside within the same second (seen in CI)
    aside = tempfile.mkdtemp(prefix=f"{PREVIOUS}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-", dir=out)
    moved = [n for n in RUN_ENTRIES if os.path.lexists(os.path.join(out, n))]
    for name in moved:
        os.replace(os.path.join(out, name), os.path.join(aside, name))
    print(f"genalign: moved the previous run in {out} aside to {aside} ({', '.join(moved)}); it is removed once "
          f"this run's first checkpoint is written", flush=True)
    return aside


def drop_previous_runs(out: str) -> None:
    """Remove the runs set aside by overwrite (called once this run has a complete checkpoint)."""
    for name in os.listdir(out) if os.path.isdir(out) else ():
        if name.startswith(PREVIOUS):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


class Checkpointer:
    """Save and load a trainer's state; registers accelerate's save/load hooks for the parts' weights."""

    def __init__(self, host):
        from .fsdp import is_fsdp

        self.host = host
        self.fsdp = is_fsdp(host.accelerator)
        host.accelerator.register_save_state_pre_hook(self._save_hook)
        host.accelerator.register_load_state_pre_hook(self._load_hook)

    # ------------------------------------------------------------------------------------------ hooks
    def _save_hook(self, models, weights, output_dir):
        h = self.host
        if h.is_main:
            from safetensors.torch import save_file

            for name, model in zip(h.parts, models):
                m = h.accelerator.unwrap_model(model)
                if name != "policy":
                    os.makedirs(os.path.join(output_dir, "parts"), exist_ok=True)
                    sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
                    save_file(sd, os.path.join(output_dir, "parts", f"{name}.safetensors"))
                elif h.generator.is_lora:
                    h.generator.save_lora(output_dir, h.generator.lora_state_dict(m))
                else:
                    m.save_pretrained(os.path.join(output_dir, h.generator.denoiser_name), safe_serialization=True)
        while weights:  # accelerate must not also write the raw state dicts
            weights.pop()

    def _load_hook(self, models, input_dir):
        h = self.host
        names = list(h.parts)
        loaded = [models.pop() for _ in range(len(models))][::-1]
        for name, model in zip(names, loaded):
            m = h.accelerator.unwrap_model(model)
            if name != "policy":
                m.load_state_dict(read_safetensors(os.path.join(input_dir, "parts", f"{name}.safetensors")))
            elif h.generator.is_lora:
                h.generator.load_lora_file(input_dir, m)
            else:
                h.generator.load_full_weights(input_dir, m)

    # ------------------------------------------------------------------------------------------ save / load
    def save(self) -> str:
        from safetensors.torch import save_file

        h = self.host
        acc = h.accelerator
        root = os.path.join(h.out, "checkpoints")
        final = os.path.join(root, f"{CKPT_PREFIX}{h.iteration}")
        tmp = os.path.join(root, f".{CKPT_PREFIX}{h.iteration}.tmp")
        if h.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        acc.wait_for_everyone()
        if self.fsdp:
            from . import fsdp

            fsdp.save(h, tmp)  # gathered full state dicts, the same files as below (genalign/core/fsdp.py)
        else:
            acc.save_state(tmp, safe_serialization=True)
        acc.wait_for_everyone()  # every process's files (its RNG state) are in tmp before the main one renames it
        if h.is_main:
            state = {"iteration": h.iteration, "optimizer_step": h.parts["policy"].steps, "counters": h.counters,
                     "elapsed": h.elapsed, "first_eval": h.first_eval, "family": h.cfg.model.family,
                     "base_model": h.cfg.model.path, "lora": h.generator.is_lora,
                     "part_steps": {n: p.steps for n, p in h.parts.items()}}
            atomic_write_json(os.path.join(tmp, "trainer_state.json"), state)
            extra = {}
            for name, part in h.parts.items():
                if part.ema is not None:
                    prefix = "ema." if name == "policy" else f"ema@{name}."
                    extra.update({prefix + k: v for k, v in part.ema.state_dict().items()})
            extra.update({f"algorithm.{k}": v.contiguous() for k, v in h.algorithm.state_dict().items()})
            for r in h.rewards:
                if getattr(r, "learnable", False):
                    extra.update({f"reward@{r.name}.{k}": v.contiguous() for k, v in r.state_dict().items()})
            if extra:
                save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()},
                          os.path.join(tmp, "extra_state.safetensors"))
            ema = h.parts["policy"].ema
            if ema is not None:  # the EMA weights in the layout `genalign export --ema` reads: a LoRA or a denoiser
                with ema.swapped():
                    os.makedirs(os.path.join(tmp, "ema"), exist_ok=True)
                    if h.generator.is_lora:
                        h.generator.save_lora(os.path.join(tmp, "ema"))
                    else:
                        h.generator.save_full(os.path.join(tmp, "ema"))
            umask_modes(tmp)  # safetensors writes 0600 files; checkpoints get the user's umask like other files
            replace_directory(tmp, final)  # an existing checkpoint-N is swapped out atomically, never lost first
            keep = h.cfg.train.keep_checkpoints
            if keep > 0:
                for path in list_checkpoints(h.out)[:-keep]:
                    shutil.rmtree(path, ignore_errors=True)
            drop_previous_runs(h.out)  # this run now has a complete checkpoint: the run it replaces may go
        acc.wait_for_everyone()
        return final

    def load(self, path: str) -> None:
        h = self.host
        try:
            with open(os.path.join(path, "trainer_state.json")) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint '{path}' is incomplete or corrupt ({e})") from None
        check_checkpoint_files(path, len(h.parts))  # one line naming the file, before accelerate reads any
        try:
            if self.fsdp:
                from . import fsdp

                fsdp.load(h, path, read_safetensors)
            else:
                h.accelerator.load_state(path)
        except GenalignError:
            raise
        except Exception as e:  # noqa: BLE001 - torch/accelerate raise many types for a damaged or foreign state
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint '{path}' cannot be loaded into this run ({type(e).__name__}: "
                                  f"{msg}); it is damaged or from another model/config") from None
        h.iteration = int(state["iteration"])
        steps = state.get("part_steps", {"policy": int(state["optimizer_step"])})
        for name, part in h.parts.items():
            part.steps = int(steps.get(name, 0))
        h.counters.update(state.get("counters", {}))
        h.elapsed = float(state.get("elapsed", 0.0))
        h.first_eval = state.get("first_eval")
        extra_file = os.path.join(path, "extra_state.safetensors")
        extra = read_safetensors(extra_file) if os.path.exists(extra_file) else {}

        def sub(prefix):
            return {k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}

        for name, part in h.parts.items():
            if part.ema is not None:
                part.ema.load_state_dict(sub("ema." if name == "policy" else f"ema@{name}."))
        h.algorithm.load_state_dict(sub("algorithm."))
        for r in h.rewards:
            if getattr(r, "learnable", False):
                r.load_state_dict(sub(f"reward@{r.name}."))
        if h.is_main:
            print(f"genalign: resumed from {path} at iteration {h.iteration}", flush=True)


def check_checkpoint_files(path: str, n_parts: int) -> None:
    """Every state file accelerate will read must be there and whole: optimizer/scheduler ``.bin`` and RNG
    ``.pkl`` files are torch zip archives (a truncated one has no central directory), weights are safetensors
    (a truncated one's header promises more bytes than the file holds). Raises one line naming the file."""
    import zipfile

    if os.path.isfile(path):
        raise CheckpointError(f"'{path}' is a file, not a checkpoint folder")
    for i in range(n_parts):
        for stem in ("optimizer", "scheduler"):
            name = f"{stem}.bin" if i == 0 else f"{stem}_{i}.bin"
            if not os.path.isfile(os.path.join(path, name)):
                raise CheckpointError(f"checkpoint '{path}' has no {name} (incomplete, or written by a run with "
                                      f"fewer trained parts)")
    for root, _, files in os.walk(path):
        for name in sorted(files):
            f = os.path.join(root, name)
            if name.endswith((".bin", ".pkl")):
                try:
                    with zipfile.ZipFile(f) as z:
                        z.infolist()
                except (zipfile.BadZipFile, OSError) as e:
                    raise CheckpointError(f"checkpoint file '{f}' is truncated or corrupt ({e})") from None
            elif name.endswith(".safetensors"):
                check_safetensors(f, "checkpoint file")


def check_safetensors(path: str, what: str = "weights file") -> None:
    """Raise one line unless ``path`` is a complete safetensors file (header parsed, every tensor's bytes there)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{what} '{path}' does not exist" if not os.path.isdir(path) else
                              f"{what} '{path}' is a folder, expected a .safetensors file")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            if keys:  # the last tensor by offset ends at the file's end; reading it proves the file is whole
                f.get_slice(keys[-1])
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise CheckpointError(f"{what} '{path}' is truncated or corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def read_safetensors(path: str):
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise CheckpointError(f"checkpoint file '{path}' is truncated or corrupt: {e}") from None
