"""``genalign export``: a training checkpoint -> a diffusers LoRA folder, or (``--fuse``) a full pipeline.

Both outputs load with stock diffusers: ``pipe.load_lora_weights(out)`` and
``DiffusionPipeline.from_pretrained(out)``; weights are safetensors; a model card (README.md) records the base
model, the run's algorithm and rewards.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import yaml

from .errors import CheckpointError
from .io import atomic_directory, atomic_write_text

LORA_FILE = "pytorch_lora_weights.safetensors"


def read_checkpoint_state(ckpt: str) -> dict:
    if os.path.isfile(ckpt):
        raise CheckpointError(f"'{ckpt}' is a file, not a checkpoint folder (give the checkpoint-N folder)")
    if not os.path.isdir(ckpt):
        raise CheckpointError(f"checkpoint '{ckpt}' does not exist")
    try:
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"'{ckpt}' is not a genalign checkpoint (no trainer_state.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint '{ckpt}' has a corrupt trainer_state.json") from None
    except OSError as e:
        raise CheckpointError(f"cannot read '{ckpt}/trainer_state.json': {e.strerror or e}") from None


def _run_config(ckpt: str) -> dict:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt))), "config.yaml")
    if os.path.exists(path):
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raise CheckpointError(f"the run's config '{path}' is unreadable or not valid YAML") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"the run's config '{path}' is not a mapping")
        return cfg
    return {}


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _check_weights(src: str, is_lora: bool, family: str) -> None:
    """Every weights file the export reads is complete (safetensors header and data), named in one line if not."""
    from .core.checkpoint import check_safetensors
    from .registry import MODELS

    if is_lora:
        check_safetensors(os.path.join(src, LORA_FILE), "LoRA weights")
        return
    folder = os.path.join(src, MODELS.get(family).denoiser_name)
    files = [f for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")] if os.path.isdir(folder) else []
    if not files:
        raise CheckpointError(f"checkpoint '{src}' has no {os.path.basename(folder)}/*.safetensors weights")
    for f in files:
        check_safetensors(os.path.join(folder, f), "weights file")


def model_card(base: str, family: str, run_cfg: dict, fused: bool) -> str:
    alg = (run_cfg.get("algorithm") or {}).get("name", "?")
    rewards = ", ".join(r.get("name", "?") for r in run_cfg.get("rewards", []) or []) or "?"
    how = ("DiffusionPipeline.from_pretrained(path)" if fused else
           f"pipe = DiffusionPipeline.from_pretrained('{base}'); pipe.load_lora_weights(path)")
    return (f"---\nlibrary_name: diffusers\nbase_model: {base}\ntags: [genalign, {alg}]\n---\n\n"
            f"# genalign export\n\n- base model: `{base}` ({family})\n- algorithm: `{alg}`\n- rewards: {rewards}\n"
            f"- format: {'full pipeline (LoRA fused)' if fused else 'diffusers LoRA'}\n\n"
            f"Load with:\n\n```python\nfrom diffusers import DiffusionPipeline\n{how}\n```\n")


def export(ckpt: str, out: str, fuse: bool = False, model: Optional[str] = None, ema: bool = False,
           overwrite: bool = False) -> str:
    from .config import ModelConfig
    from .registry import MODELS

    state = read_checkpoint_state(ckpt)
    run_cfg = _run_config(ckpt)
    base = model or state.get("base_model")
    family = state.get("family") or (run_cfg.get("model") or {}).get("family", "sd3")
    src = os.path.join(ckpt, "ema") if ema else ckpt
    if ema and not os.path.isdir(src):
        raise CheckpointError(f"checkpoint '{ckpt}' has no EMA weights (train.ema.decay was 0)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"export folder '{out}' is a file, not a folder")
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise CheckpointError(f"export folder '{out}' is not empty; pass --overwrite to replace it")
    is_lora = state.get("lora", True)
    if is_lora and not os.path.exists(os.path.join(src, LORA_FILE)):
        raise CheckpointError(f"checkpoint '{src}' has no {LORA_FILE}")
    _check_weights(src, is_lora, family)  # a truncated file fails here, in one line, before anything is written
    with atomic_directory(out) as tmp:
        if not fuse and is_lora:
            shutil.copy2(os.path.join(src, LORA_FILE), os.path.join(tmp, LORA_FILE))
        else:
            gen_cls = MODELS.get(family)
            mcfg = ModelConfig(**{k: v for k, v in (run_cfg.get("model") or {}).items() if k in ("family", "revision", "variant", "trust_remote_code")})
            mcfg.path = base
            pipe_cls = gen_cls.pipe_class()
            from .models.base import _null_components

            try:
                pipe = pipe_cls.from_pretrained(base, use_safetensors=True, **_null_components(pipe_cls, mcfg))
            except Exception as e:  # noqa: BLE001 - diffusers raises many types for a missing/foreign pipeline
                raise CheckpointError(f"cannot load the base pipeline '{base}' ({_first_line(e)}); pass --model "
                                      f"PATH to the pipeline the run trained") from None
            try:
                if is_lora:
                    pipe.load_lora_weights(src)
                    pipe.fuse_lora()
                    pipe.unload_lora_weights()
                else:
                    name = gen_cls.denoiser_name
                    comp = getattr(pipe, name)
                    setattr(pipe, name, type(comp).from_pretrained(os.path.join(src, name)))
            except Exception as e:  # noqa: BLE001 - weights from another model
                raise CheckpointError(f"the weights in '{src}' do not fit the base pipeline '{base}' "
                                      f"({_first_line(e)})") from None
            pipe.save_pretrained(tmp, safe_serialization=True)
            fuse = True
        atomic_write_text(os.path.join(tmp, "README.md"), model_card(base, family, run_cfg, fuse))
    return out
