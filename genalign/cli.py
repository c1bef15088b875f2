"""Command line: ``genalign train | sample | export | eval | report | serve-reward``.

    genalign train [CONFIG.yaml] [key=value ...]       # no CONFIG: the embedded toy quickstart
    accelerate launch -m genalign train CONFIG.yaml     # the same, distributed
    genalign sample --model PATH --prompt "a cat" --seeds 0 1 2 3 [--lora CKPT] --out DIR [--overwrite]
    genalign export CHECKPOINT --out DIR [--fuse] [--ema]
    genalign eval CONFIG.yaml [--checkpoint CKPT] [--out metrics.json]
    genalign eval --benchmark screenspot-v2 --data DIR --model PATH   # GUI grounding evaluator
    genalign report RUN_DIR [--out FILE.png]           # curves + first/last eval grids -> RUN_DIR/report.png
    genalign serve-reward NAME [--port P] [--arg key=value ...]
    genalign embed-exemplars --encoder dinov2 --reference DIR --out exemplars.safetensors [--arg key=value ...]

User errors (bad config, unknown names, missing or corrupt files) print one line ``genalign: error: ...`` and
exit with status 2, without a traceback (``GENALIGN_DEBUG=1`` prints it too, e.g. for a user reward that raised).
Numbers on the command line are range-checked as they are parsed (``genalign.utils.argtypes``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from .errors import GenalignError
from .utils.argtypes import OneLineParser, non_negative_float, non_negative_int, open_fraction, positive_int, seed

DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "toy",
                              "flow_grpo.yaml")


_Parser = OneLineParser  # errors are one line, exit 2 (argparse's own convention)
OWN_FILES = ("grid.png", "samples.jsonl", "evals.jsonl", "index.html")
SAMPLE_FILE = re.compile(r"^\d{4,}_seed\d+\.(png|wav)$")  # what sample_to_dir writes, with OWN_FILES
FAMILIES = ["sd3", "flux", "sd", "sdxl", "stable_audio", "stable_audio3"]  # `--family` choices (the model registry's names)
_OVERRIDE_KEY = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*$")


def _is_override(item: str) -> bool:
    """``key=value`` with a dotted key (its value may well end in .yaml: ``data.prompts=p.yaml``); a bare path,
    even one holding '=' in a folder name (``runs/lr=1e-4/config.yaml``), is a config file."""
    key, eq, _ = item.partition("=")
    return bool(eq) and bool(_OVERRIDE_KEY.match(key))


def _split_config_and_overrides(items: List[str]):
    config, overrides = None, []
    for it in items:
        if _is_override(it):
            overrides.append(it)
        elif config is None:
            config = it
        else:
            raise GenalignError(f"unexpected argument '{it}': give one CONFIG file and key=value overrides")
    return config, overrides


def cmd_train(args) -> int:
    from .config import load_config

    config, overrides = _split_config_and_overrides(args.items)
    if config is None:
        config = DEFAULT_RECIPE
        if not os.path.exists(config):
            raise GenalignError(f"no CONFIG given and the embedded default recipe '{config}' is missing")
        print(f"genalign: no config given; using the embedded toy recipe {config}", flush=True)
    cfg = load_config(config, overrides)
    if cfg.task == "gui":
        from .gui.train import run

        run(cfg)
        return 0
    from .trainer import train

    summary = train(cfg)
    if not any((summary.get("part_steps") or {"policy": 1}).values()):
        c = summary.get("counters") or {}
        raise GenalignError(f"no update happened in {summary.get('iterations')} iterations: "
                            f"{c.get('skipped_nonfinite_reward', 0)} skipped for NaN/inf rewards (a reward that "
                            f"applies to no sample, or an infinite score), {c.get('skipped_nonfinite_loss', 0)} "
                            f"optimiser steps skipped for non-finite losses; the checkpoint holds the initial model")
    return 0


def _load_generator(model: str, family: Optional[str], height: int, width: int, dtype: str, device: str,
                    lora_rank: int = 0, seconds: Optional[float] = None, base_from: Optional[float] = None):
    from .config import ModelConfig
    from .registry import MODELS

    from .config_checks import check_family_matches_pipeline

    fam = family or _guess_family(model)
    check_family_matches_pipeline(fam, model, MODELS.get(fam), key="--family")
    mcfg = ModelConfig(family=fam, path=model, height=height, width=width, dtype=dtype, seconds=seconds or None,
                       base_from=base_from)
    mcfg.lora.rank = 0
    gen = MODELS.get(fam).load(mcfg, device=device)
    return gen


def _guess_family(model: str) -> str:
    import json

    from .errors import ConfigError

    index = os.path.join(model, "model_index.json")
    if os.path.exists(index):
        with open(index) as f:
            cls = json.load(f).get("_class_name", "")
        table = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "StableDiffusionPipeline": "sd",
                 "StableDiffusionXLPipeline": "sdxl", "StableAudioPipeline": "stable_audio",
                 "StableAudio3Pipeline": "stable_audio3"}
        if cls in table:
            return table[cls]
    raise ConfigError(f"cannot tell the model family of '{model}'; pass --family ({', '.join(FAMILIES)})")


def _reward_spec(text: str):
    """``NAME`` or a YAML mapping like a config's reward entry, ``{name: fd, encoder: dinov2, reference: DIR}``."""
    import yaml

    from .config import safe_load_unique

    if not text.lstrip().startswith("{"):
        return text, None
    try:
        spec = safe_load_unique(text)
    except yaml.YAMLError as e:
        raise GenalignError(f"--reward {text!r} is not a valid YAML mapping: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise GenalignError(f"--reward {text!r}: a mapping needs a 'name' key, e.g. '{{name: fd, reference: DIR}}'")
    name = spec.pop("name")
    spec.pop("weight", None)
    return name, spec


def cmd_sample(args) -> int:
    import torch

    from .config import SamplerConfig
    from .io import read_prompts
    from .sampling import sample_to_dir

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_prompts(args.prompts)
    if not prompts:
        raise GenalignError("give --prompt TEXT (repeatable) or --prompts FILE")
    specs = [_reward_spec(r) for r in args.reward or []]
    _prepare_sample_dir(args.out, args.overwrite, clear=False)  # before the model loads: fail fast
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .core.hostmem import tune_host_malloc

    tune_host_malloc("auto", on_accelerator=device != "cpu")
    from .export import read_experts, read_student

    experts = read_experts(args.lora) or read_experts(args.model) or {}
    base_from = args.base_from if args.base_from is not None else experts.get("base_from")
    fused = base_from is not None and not args.lora  # a full model: the base expert is another pipeline
    base = (args.base_model or experts.get("base_model")) if fused else args.model
    if fused and not base:
        raise GenalignError("--base-from with a full --model needs the base pipeline: pass --base-model PATH")
    gen = _load_generator(base, args.family, args.height, args.width, args.dtype, device, seconds=args.seconds,
                          base_from=base_from)  # two experts: the base is copied before the trained weights load
    if fused:
        gen.load_full_weights(args.model)

    student = read_student(args.model) or read_student(args.lora)
    if student:  # an exported few-step student: its scheduler settings, step count and guidance by default
        gen.prepare_few_step()
    args.steps = args.steps or (student or {}).get("num_inference_steps", 28)
    args.guidance = args.guidance if args.guidance is not None else (student or {}).get("guidance_scale", 4.5)
    if args.lora:
        from .export import LORA_FILE

        path = args.lora if args.lora.endswith(".safetensors") else os.path.join(args.lora, LORA_FILE)
        if not os.path.exists(path) and os.path.isdir(os.path.join(args.lora, gen.denoiser_name)):
            raise GenalignError(f"'{args.lora}' is a full fine-tune, not a LoRA: run `genalign export {args.lora} "
                                f"--out DIR` and sample with --model DIR")
        if not os.path.exists(path):
            raise GenalignError(f"LoRA weights '{path}' do not exist")
        try:
            gen.apply_lora(gen.pipe, args.lora if os.path.isdir(args.lora) else path)
        except Exception as e:  # noqa: BLE001 - diffusers raises various types for corrupt/mismatched files
            raise GenalignError(f"cannot load LoRA '{path}': {str(e).splitlines()[0]}") from None
    scfg = SamplerConfig(num_steps=args.steps, eval_num_steps=args.steps, guidance_scale=args.guidance,
                         kernel=gen.law.default_kernel)
    rewards = []
    if args.reward:
        from .rewards.base import build_reward

        rewards = [build_reward(*spec).to(device) for spec in specs]
    recs = sample_to_dir(gen, prompts, args.seeds, scfg, args.out, num_steps=args.steps,
                         guidance_scale=args.guidance, rewards=rewards,  # cleared once sampled and scored:
                         before_write=lambda: _prepare_sample_dir(args.out, args.overwrite, clear=True))  # no loss
    print(f"genalign: wrote {len(recs)} samples and grid.png to {os.path.abspath(args.out)}")
    return 0


def _prepare_sample_dir(out: str, overwrite: bool, clear: bool) -> None:
    """Refuse a non-empty ``out`` (earlier samples would be written over and samples.jsonl appended to, its
    records then naming the wrong prompts) unless ``overwrite``; with ``clear``, remove genalign's own sample files
    (NNNN_seedS.png, grid.png, samples.jsonl) and nothing else."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise GenalignError(f"--out '{out}' is a file, not a folder")
    entries = os.listdir(out)
    if not entries:
        return
    if not overwrite:
        raise GenalignError(f"--out '{out}' is not empty ({len(entries)} entries); choose a new folder, or pass "
                            f"--overwrite to replace earlier samples (other files are kept)")
    for name in entries if clear else ():
        path = os.path.join(out, name)
        if (SAMPLE_FILE.match(name) or name in OWN_FILES) and os.path.isfile(path):
            os.unlink(path)


def cmd_export(args) -> int:
    from .export import export

    out = export(args.checkpoint, args.out, fuse=args.fuse, model=args.model, ema=args.ema, overwrite=args.overwrite)
    full = os.path.exists(os.path.join(out, "model_index.json"))
    print(f"genalign: exported {'pipeline' if full else 'LoRA'} to {os.path.abspath(out)}")
    return 0


def cmd_embed_exemplars(args) -> int:
    """Embed an exemplar set once and save it as a portable ``.safetensors`` file (key ``embeddings``), usable as
    any distributional reward's ``reference`` (e.g. shipped with a recipe, or read by every node of a run)."""
    import torch

    from .errors import ConfigError
    from .rewards.distributional import ExemplarSet
    from .rewards.remote import parse_key_values

    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out '{args.out}' must end in .safetensors")
    ex = ExemplarSet(args.encoder, args.reference, args.kind, parse_key_values(args.arg), batch_size=args.batch_size,
                     image_size=args.image_size, use_cache=False)
    ex.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta = ex.save(args.out)
    print(f"genalign: wrote {meta['count']} x {ex.embeddings.shape[1]} {meta['kind']} embeddings "
          f"({meta['encoder'] or args.encoder}) to {os.path.abspath(args.out)}")
    return 0


def cmd_serve_reward(rest: List[str]) -> int:
    from .rewards.remote import serve_main

    return serve_main(rest)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genalign", description="Fine-tune diffusers generators with rewards.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train from a YAML recipe (default: the toy quickstart)")
    t.add_argument("items", nargs="*", help="CONFIG.yaml and key=value overrides")
    s = sub.add_parser("sample", help="sample PNGs + grid from a pipeline (optionally with a LoRA)")
    s.add_argument("--model", required=True, help="hub id or local pipeline folder")
    s.add_argument("--family", choices=FAMILIES)
    s.add_argument("--lora", help="checkpoint/export folder or .safetensors file")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--prompts", help="a prompts file (.txt or .jsonl)")
    s.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2, 3])
    s.add_argument("--steps", type=positive_int, default=None, help="default 28, or an exported student's own")
    s.add_argument("--guidance", type=non_negative_float, default=None, help="default 4.5, or a student's own")
    s.add_argument("--height", type=non_negative_int, default=0, help="pixels (default: the pipeline's own size)")
    s.add_argument("--width", type=non_negative_int, default=0, help="pixels (default: the pipeline's own size)")
    s.add_argument("--seconds", type=non_negative_float, default=0.0,
                   help="audio families: seconds to generate (default: the model's full length)")
    s.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    s.add_argument("--base-from", type=open_fraction, default=None,
                   help="two experts (a run with model.base_from): the trained weights denoise the steps before this "
                        "fraction, the base the rest (default: the export's experts.json)")
    s.add_argument("--base-model",
                   help="with --base-from and a full --model: the base pipeline (default: experts.json's)")
    s.add_argument("--device")
    s.add_argument("--reward", action="append",
                   help="score samples with this reward (repeatable): a name, or a mapping with arguments as in a "
                        "config, e.g. '{name: exemplar_loglik, encoder: digits, reference: FILE}'")
    s.add_argument("--out", required=True, help="output folder; must be empty or new unless --overwrite")
    s.add_argument("--overwrite", action="store_true",
                   help="replace earlier samples in --out (only genalign's own files: NNNN_seedS.png, grid.png, "
                        "samples.jsonl)")
    e = sub.add_parser("export", help="checkpoint -> diffusers LoRA folder, or --fuse -> full pipeline")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--fuse", action="store_true", help="fuse the LoRA and save a full pipeline")
    e.add_argument("--model", help="base pipeline (default: the one the run trained)")
    e.add_argument("--ema", action="store_true", help="export the EMA weights")
    e.add_argument("--overwrite", action="store_true")
    v = sub.add_parser("eval", help="score a model over a prompt set, or a GUI benchmark (--benchmark)")
    v.add_argument("config", nargs="?", help="a training recipe (its model, rewards and eval prompts)")
    v.add_argument("--checkpoint", help="a checkpoint or LoRA folder to evaluate")
    v.add_argument("--prompts", help="prompts file (default: the recipe's eval prompts)")
    v.add_argument("--seeds", type=seed, nargs="+")
    v.add_argument("--out", help="metrics.json path (default: <run>/eval/<checkpoint name or base>/metrics.json)")
    v.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation at the same --out")
    v.add_argument("--benchmark", help="screenspot | screenspot-v2 | screenspot-pro (GUI grounding)")
    r = sub.add_parser("report", help="training curves and the first/last eval grids of a run -> report.png")
    r.add_argument("run_dir", help="a training run's output directory (holds metrics.jsonl, samples/)")
    r.add_argument("--out", help="PNG path (default: RUN_DIR/report.png)")
    sub.add_parser("serve-reward", help="serve a reward model over HTTP on loopback", add_help=False)
    x = sub.add_parser("embed-exemplars", help="embed an exemplar set once into a .safetensors file (DRAGON)")
    x.add_argument("--encoder", required=True, help="clip | dinov2 | clap | digits | a dotted path")
    x.add_argument("--reference", required=True, help="an image/audio folder or a prompts file (text exemplars)")
    x.add_argument("--out", required=True, help="FILE.safetensors (key 'embeddings')")
    x.add_argument("--kind", default="auto", help="auto | images | audio | text")
    x.add_argument("--arg", action="append", metavar="KEY=VALUE", help="encoder argument, e.g. model=ID (repeatable)")
    x.add_argument("--batch-size", type=positive_int, default=32)
    x.add_argument("--image-size", type=positive_int, default=None)
    x.add_argument("--device", default=None)
    return p


def quiet_libraries() -> None:
    """Silence diffusers/transformers loading bars and info logs: genalign shows its own progress."""
    for k in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(k, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    try:
        if argv and argv[0] == "serve-reward":
            return cmd_serve_reward(argv[1:])
        if argv and argv[0] == "eval" and "--benchmark" in argv:
            from .gui.cli import eval_main

            return eval_main(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "train":
            return cmd_train(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "report":
            from .report import report_main

            return report_main(args)
        if args.command == "embed-exemplars":
            return cmd_embed_exemplars(args)
        if args.command == "eval":
            from .evaluate import evaluate_main

            return evaluate_main(args)
        return 2
    except GenalignError as e:
        if os.environ.get("GENALIGN_DEBUG"):  # the full (chained) traceback, e.g. of a user reward that raised
            import traceback

            traceback.print_exc()
        print(f"genalign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
