"""Checkpoints under accelerate's FSDP (version 2, ``fully_shard``): the same files as under DDP, from gathered full
state dicts.

Under FSDP every parameter is a DTensor shard, so a module's ``state_dict()`` holds shards and accelerate's own FSDP
``save_state`` writes a second copy of the weights in its own format. Instead, every process takes part in
``torch.distributed.checkpoint.state_dict.get_model_state_dict`` / ``get_optimizer_state_dict`` with
``full_state_dict=True, cpu_offload=True`` (the full tensors arrive on the main process) and the main process
writes what a DDP checkpoint holds: the policy in diffusers' layout (``pytorch_lora_weights.safetensors`` that
``pipe.load_lora_weights`` reads, or the denoiser folder ``from_pretrained`` reads), other parts as
``parts/<name>.safetensors``, and ``optimizer[_i].bin`` (the full optimiser state, keyed by parameter name — so an
FSDP checkpoint resumes under FSDP, not under DDP). Schedulers and RNG states go through accelerate's
``save_accelerator_state`` as under DDP. Loading reads the same files on every process and
hands them to ``set_model_state_dict`` / ``set_optimizer_state_dict``, which cut out each process's shards.
"""

from __future__ import annotations

import glob
import os
from typing import Dict

import torch

from ..errors import CheckpointError


def is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _file(stem: str, i: int) -> str:
    return f"{stem}.bin" if i == 0 else f"{stem}_{i}.bin"


def _raw_optimizer(opt):
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch optimiser


def _lora_names(module) -> Dict[str, str]:
    """{name in the diffusers LoRA file (without the denoiser prefix): the module's parameter name}, by handing peft
    the live trainable parameters and seeing which key each comes back under."""
    from peft.utils import get_peft_model_state_dict

    live = {n: p for n, p in module.named_parameters() if p.requires_grad}
    renamed = get_peft_model_state_dict(module, state_dict=live)
    by_id = {id(p): n for n, p in live.items()}
    return {k: by_id[id(v)] for k, v in renamed.items() if id(v) in by_id}


def save_config(module, folder: str) -> None:
    """The module's diffusers config.json, naming its own class (fully_shard swapped in a subclass FSDP<Name>)."""
    import json

    from torch.distributed.fsdp import FSDPModule

    module.save_config(folder)
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["_class_name"] = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule)).__name__
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def save(host, out_dir: str) -> None:
    """Write every part's weights and optimiser state (gathered), the schedulers and the RNG states into
    ``out_dir``; called on every process."""
    from accelerate.checkpointing import save_accelerator_state
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    h, acc = host, host.accelerator
    gen = h.generator
    for i, (name, part) in enumerate(h.parts.items()):
        lora = name == "policy" and gen.is_lora
        sd = get_model_state_dict(part.module, options=_options(cpu_offload=True, ignore_frozen_params=lora))
        osd = get_optimizer_state_dict(part.module, _raw_optimizer(part.optimizer), options=_options(cpu_offload=True))
        if not h.is_main:
            continue
        sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
        if name != "policy":
            os.makedirs(os.path.join(out_dir, "parts"), exist_ok=True)
            save_file(sd, os.path.join(out_dir, "parts", f"{name}.safetensors"))
        elif lora:
            names = _lora_names(part.raw)
            gen.save_lora(out_dir, {k: sd[n] for k, n in names.items()})
        else:
            from huggingface_hub import save_torch_state_dict

            folder = os.path.join(out_dir, gen.denoiser_name)
            save_config(part.raw, folder)  # config.json + diffusion_pytorch_model*.safetensors: from_pretrained's
            save_torch_state_dict(sd, folder, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                                  max_shard_size="10GB")
        torch.save(osd, os.path.join(out_dir, _file("optimizer", i)))
    save_accelerator_state(out_dir, [], [], [p.scheduler for p in h.parts.values()], [], acc.process_index, acc.step,
                           acc.scaler, safe_serialization=True)


def _read_weights(host, name: str, part, in_dir: str, read_safetensors) -> Dict[str, torch.Tensor]:
    gen = host.generator
    if name != "policy":
        return read_safetensors(os.path.join(in_dir, "parts", f"{name}.safetensors"))
    if gen.is_lora:
        sd = read_safetensors(os.path.join(in_dir, "pytorch_lora_weights.safetensors"))
        prefix = f"{gen.denoiser_name}."
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
        names = _lora_names(part.raw)
        missing = sorted(set(names) - set(sd))
        if missing or set(sd) - set(names):
            raise CheckpointError(f"LoRA weights in '{in_dir}' do not match this model (e.g. "
                                  f"{(missing or sorted(set(sd) - set(names)))[0]})")
        return {names[k]: v for k, v in sd.items()}
    files = sorted(glob.glob(os.path.join(in_dir, gen.denoiser_name, "*.safetensors")))
    if not files:
        raise CheckpointError(f"checkpoint '{in_dir}' has no {gen.denoiser_name} weights")
    sd = {}
    for f in files:
        sd.update(read_safetensors(f))
    return sd


def load(host, in_dir: str, read_safetensors) -> None:
    """Load what :func:`save` wrote into the sharded parts, optimisers, schedulers and RNG; every process.
    ``read_safetensors(path)`` reads a weights file (checkpoint.py's, raising one line on a damaged file)."""
    from accelerate.checkpointing import load_accelerator_state
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    h, acc = host, host.accelerator
    for i, (name, part) in enumerate(h.parts.items()):
        lora = name == "policy" and h.generator.is_lora
        full = _read_weights(h, name, part, in_dir, read_safetensors)
        set_model_state_dict(part.module, full, options=_options(strict=not lora))
        osd = torch.load(os.path.join(in_dir, _file("optimizer", i)), map_location="cpu", weights_only=True)
        set_optimizer_state_dict(part.module, _raw_optimizer(part.optimizer), osd, options=_options())
    over = load_accelerator_state(in_dir, [], [], [p.scheduler for p in h.parts.values()], [], acc.process_index,
                                  acc.scaler)
    acc.step = over.get("step", acc.step)
