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
STUDENT_FILE = "student.json"
EXPERTS_FILE = "experts.json"


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


def student_settings(run_cfg: dict) -> Optional[dict]:
    """How the stock pipeline samples a few-step student (a run of an algorithm with ``few_step_student``), or
    None: its step count and guidance (the run's evaluation sampler)."""
    from .registry import ALGORITHMS

    name = (run_cfg.get("algorithm") or {}).get("name")
    try:
        cls = ALGORITHMS.get(name) if name else None
    except Exception:  # noqa: BLE001 - an algorithm that no longer imports: not a student we know
        cls = None
    if not getattr(cls, "few_step_student", False):
        return None
    s = run_cfg.get("sampler") or {}
    from .algorithms.dmd2 import student_schedule_steps

    args = (run_cfg.get("algorithm") or {}).get("args") or {}
    sigmas = args.get("few_step_sigmas", getattr(cls, "few_step_sigmas", "stock"))
    return {"num_inference_steps": int(s.get("eval_num_steps") or s.get("num_steps") or 1),
            "guidance_scale": float(s.get("guidance_scale", 1.0)), "algorithm": name,
            "train_steps": student_schedule_steps(sigmas, int(s.get("num_steps") or 1))}


def _read_export_json(path: Optional[str], name: str) -> Optional[dict]:
    """An export folder's ``name`` JSON file (None when ``path`` is no folder or lacks it; one line if corrupt)."""
    if not path or not os.path.isdir(path) or not os.path.exists(os.path.join(path, name)):
        return None
    try:
        with open(os.path.join(path, name)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}/{name}' is unreadable or not valid JSON") from None


def read_student(path: Optional[str]) -> Optional[dict]:
    """The ``student.json`` of an exported student folder (or None)."""
    return _read_export_json(path, STUDENT_FILE)


def read_experts(path: Optional[str]) -> Optional[dict]:
    """The ``experts.json`` of an export whose run trained with ``model.base_from`` (or None)."""
    return _read_export_json(path, EXPERTS_FILE)


def _experts_card(experts: Optional[dict], fused: bool) -> str:
    if not experts:
        return ""
    f, base = experts["base_from"], experts["base_model"]
    how = f"--lora PATH --model {base}" if not fused else f"--model PATH --base-model {base}"
    return (f"\n## Two experts (`model.base_from: {f}`)\n\nThe run trained these weights on the early, high-noise "
            f"steps only: they denoise the first ⌈{f}·N⌉ of N steps and the base model (`{base}`) the rest. Sampled "
            f"with these weights on every step the model is not the one that was trained. `genalign sample {how}` "
            f"splits the steps (it reads `{EXPERTS_FILE}`).\n")


def _scheduler_from(base: str):
    """The base pipeline's scheduler (a local folder or a hub id), without loading its networks."""
    import diffusers

    cfg = diffusers.DDIMScheduler.load_config(base, subfolder="scheduler")
    return getattr(diffusers, cfg["_class_name"]).from_config(cfg)


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


def model_card(base: str, family: str, run_cfg: dict, fused: bool, student: Optional[dict] = None,
               experts: Optional[dict] = None) -> str:
    alg = (run_cfg.get("algorithm") or {}).get("name", "?")
    rewards = ", ".join(r.get("name", "?") for r in run_cfg.get("rewards", []) or []) or "?"
    how = ("DiffusionPipeline.from_pretrained(path)" if fused else
           f"pipe = DiffusionPipeline.from_pretrained('{base}'); pipe.load_lora_weights(path)")
    return (f"---\nlibrary_name: diffusers\nbase_model: {base}\ntags: [genalign, {alg}]\n---\n\n"
            f"# genalign export\n\n- base model: `{base}` ({family})\n- algorithm: `{alg}`\n- rewards: {rewards}\n"
            f"- format: {'full pipeline (LoRA fused)' if fused else 'diffusers LoRA'}\n\n"
            f"Load with:\n\n```python\nfrom diffusers import DiffusionPipeline\n{how}\n```\n"
            + _student_card(student, fused) + _experts_card(experts, fused))


def _student_card(student: Optional[dict], fused: bool) -> str:
    if not student:
        return ""
    k, g = student["num_inference_steps"], student["guidance_scale"]
    sched = "" if fused else ("pipe.scheduler = type(pipe.scheduler).from_pretrained(path, subfolder='scheduler')"
                              "  # the student's scheduler settings\n")
    return (f"\n## Few-step student ({student['algorithm']})\n\nSample it at its own step count, without CFG; the "
            f"scheduler saved here has the student's settings (`student.json`):\n\n```python\n{sched}"
            f"images = pipe(prompt, num_inference_steps={k}, guidance_scale={g}).images\n```\n")


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
    student = student_settings(run_cfg)
    base_from = (run_cfg.get("model") or {}).get("base_from")
    experts = None if base_from is None else {"base_from": float(base_from), "base_model": base, "family": family}
    gen_cls = MODELS.get(family)
    _check_weights(src, is_lora, family)  # a truncated file fails here, in one line, before anything is written
    with atomic_directory(out) as tmp:
        if not fuse and is_lora:
            for name in getattr(gen_cls, "lora_files", (LORA_FILE,)):  # the family's adapter files
                shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
            if student:  # the student's scheduler next to its LoRA (scheduler/), for the stock pipeline
                sched = _scheduler_from(base)
                gen_cls.few_step_scheduler(sched, student["train_steps"]).save_pretrained(os.path.join(tmp, "scheduler"))
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
                    gen_cls.fuse_lora_into(pipe, src)
                else:
                    name = gen_cls.denoiser_name
                    comp = getattr(pipe, name)
                    setattr(pipe, name, type(comp).from_pretrained(os.path.join(src, name)))
            except Exception as e:  # noqa: BLE001 - weights from another model
                raise CheckpointError(f"the weights in '{src}' do not fit the base pipeline '{base}' "
                                      f"({_first_line(e)})") from None
            if student:
                pipe.scheduler = gen_cls.few_step_scheduler(pipe.scheduler, student["train_steps"])
            pipe.save_pretrained(tmp, safe_serialization=True)
            fuse = True
        if student:
            atomic_write_text(os.path.join(tmp, STUDENT_FILE), json.dumps(student, indent=2) + "\n")
        if experts:
            atomic_write_text(os.path.join(tmp, EXPERTS_FILE), json.dumps(experts, indent=2) + "\n")
        atomic_write_text(os.path.join(tmp, "README.md"), model_card(base, family, run_cfg, fuse, student, experts))
    return out
