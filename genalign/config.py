"""Typed run configuration: dataclasses are the schema, YAML files are instances, ``key=value`` overrides.

    cfg = load_config("configs/toy/flow_grpo.yaml", ["train.learning_rate=1e-4", "algorithm.beta=0.04"])

Everything is validated before any model loads: an unknown key, a wrong type, an unknown registry name
(algorithm, reward, model family) or an out-of-range value raises :class:`ConfigError` with one line that
names the key and the valid choices. Algorithm and reward sections are validated against the registered
class (an algorithm's dataclass fields; a reward's constructor parameters).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

from .errors import ConfigError, choices

# ----------------------------------------------------------------------------------------------------------
# Schema


@dataclass
class LoraConfig:
    rank: int = field(default=32, metadata={"help": "LoRA rank; 0 = full fine-tuning of the denoiser."})
    alpha: float = field(default=64.0, metadata={"help": "LoRA alpha (scaling = alpha / rank)."})
    target_modules: Optional[List[str]] = field(
        default=None, metadata={"help": "Module names to adapt; null = the model family's default."}
    )
    init: str = field(default="gaussian", metadata={"help": "LoRA init: gaussian | default (kaiming) | pissa."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})


@dataclass
class ModelConfig:
    family: str = field(default="sd3", metadata={"help": "Model family adapter: sd3 | flux | sd | sdxl | stable_audio | stable_audio3."})
    path: str = field(default="", metadata={"help": "Hub id or local path of a diffusers pipeline."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision."})
    variant: Optional[str] = field(default=None, metadata={"help": "Weights variant, e.g. fp16."})
    dtype: str = field(default="fp32", metadata={"help": "dtype of frozen parts: fp32 | fp16 | bf16."})
    height: int = field(default=512, metadata={"help": "Image height in pixels."})
    width: int = field(default=512, metadata={"help": "Image width in pixels."})
    seconds: Optional[float] = field(
        default=None, metadata={"help": "Audio families: seconds generated (the decoded, scored crop); null = all."}
    )
    sample_rate: Optional[int] = field(
        default=None, metadata={"help": "Audio families: expected output rate in Hz (checked); null = the model's."}
    )
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_sequence_length: Optional[int] = field(
        default=None, metadata={"help": "T5 tokens (SD3/FLUX); null = the pipeline's default (256 / 512)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Checkpoint denoiser blocks."})
    enable_xformers: bool = field(default=False, metadata={"help": "Use xformers attention (CUDA only)."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the denoiser's repeated blocks."})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend (model.compile)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the hub."})
    base_from: Optional[float] = field(default=None, metadata={
        "help": "Two experts by noise level: from this fraction of the sampler's steps on, the base model (adapter "
                "disabled, or a frozen copy for full fine-tuning) denoises, in rollouts, evaluation and sampling; the "
                "trained weights act only on the earlier steps. null = the trained weights on every step."})


@dataclass
class SamplerConfig:
    num_steps: int = field(default=10, metadata={"help": "Denoising steps of training rollouts."})
    eval_num_steps: int = field(default=40, metadata={"help": "Steps of the deterministic evaluation sampler."})
    guidance_scale: float = field(default=4.5, metadata={"help": "CFG scale (FLUX: embedded guidance)."})
    kernel: str = field(
        default="sde",
        metadata={"help": "Stochastic step: sde (Flow-GRPO) | eta (DanceGRPO) | cps | ddim (eps models)."},
    )
    noise_level: float = field(default=0.7, metadata={"help": "Flow-GRPO a / CPS a."})
    eta: float = field(default=1.0, metadata={"help": "DanceGRPO constant eta, or DDIM eta."})
    cps_logprob: str = field(default="simplified", metadata={"help": "CPS log-prob: simplified | gaussian."})
    logprob_reduce: str = field(default="mean", metadata={"help": "Reduction of log-probs over dims: mean|sum."})
    shift: Optional[float] = field(default=None, metadata={"help": "Time shift; null = the scheduler's."})
    same_initial_noise: bool = field(default=False, metadata={"help": "DanceGRPO: one x_T per group."})
    train_timesteps: str = field(
        default="all_but_last",
        metadata={"help": "Trained steps: all_but_last | random_subset | window | sliding_window."},
    )
    timestep_fraction: float = field(default=0.99, metadata={"help": "Fraction of steps trained."})
    window_size: int = field(default=2, metadata={"help": "SDE window length (window schemes)."})
    window_range: float = field(default=0.5, metadata={"help": "Window start drawn in [0, range*T)."})
    detach_uncond: bool = field(default=False, metadata={"help": "Detach the unconditional CFG branch."})


@dataclass
class DataConfig:
    prompts: Union[str, List[str]] = field(
        default_factory=list, metadata={"help": "Training prompts: a .txt/.jsonl file or a list."}
    )
    eval_prompts: Union[str, List[str], None] = field(
        default=None, metadata={"help": "Evaluation prompts (file or list); null = the first training prompts."}
    )
    eval_seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3], metadata={"help": "Fixed eval seeds."})
    group_size: int = field(default=8, metadata={"help": "Samples per prompt (G)."})
    prompts_per_iteration: int = field(default=4, metadata={"help": "Distinct prompts per iteration."})
    real: Optional[str] = field(
        default=None, metadata={"help": "Real data for phases that need it: an image folder, a .safetensors file "
                                        "with a 'samples' tensor, or toy:digits."})
    real_batch_size: int = field(default=0, metadata={"help": "Real samples per phase batch (0 = the rollout's)."})


@dataclass
class EmaConfig:
    decay: float = field(default=0.0, metadata={"help": "EMA decay of trainable parameters; 0 = off."})
    every: int = field(default=1, metadata={"help": "Update the EMA every N optimiser steps."})


@dataclass
class PartConfig:
    """Optimiser settings of one trained part (``train.parts.<name>``); null = the part's own default, else the
    run's ``train.*`` value."""

    learning_rate: Optional[float] = field(default=None, metadata={"help": "AdamW learning rate."})
    adam_betas: Optional[List[float]] = field(default=None, metadata={"help": "AdamW betas."})
    weight_decay: Optional[float] = field(default=None, metadata={"help": "AdamW weight decay."})
    max_grad_norm: Optional[float] = field(default=None, metadata={"help": "Gradient clipping; 0 = off."})
    ema_decay: Optional[float] = field(default=None, metadata={"help": "EMA decay of the part; 0 = off."})


@dataclass
class TrainConfig:
    iterations: int = field(default=100, metadata={"help": "Rollout/update iterations."})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate."})
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 = off."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear LR warm-up in optimiser steps."})
    lr_schedule: str = field(default="constant", metadata={
        "help": "LR decay over train.iterations, the same for every part: constant | linear | cosine (a run "
                "resumed with more iterations stretches what remains of it)."})
    lr_min_ratio: float = field(default=0.0, metadata={
        "help": "linear / cosine: the LR at the last iteration, as a fraction of the part's learning rate."})
    optimizer_steps_per_iteration: int = field(
        default=2, metadata={"help": "Optimiser steps per rollout batch (Flow-GRPO: 2)."}
    )
    inner_epochs: int = field(default=1, metadata={"help": "Passes over each rollout batch."})
    rollout_batch_size: int = field(default=8, metadata={"help": "Trajectories per rollout forward, per process."})
    train_batch_size: int = field(default=8, metadata={"help": "Trajectories per backward, per process."})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision: no | fp16 | bf16."})
    seed: int = field(default=0, metadata={"help": "Global seed."})
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval_every: int = field(default=10, metadata={"help": "Evaluate every N iterations (0 = only start/end)."})
    save_every: int = field(default=10, metadata={"help": "Checkpoint every N iterations (0 = only at end)."})
    keep_checkpoints: int = field(default=3, metadata={"help": "Checkpoints kept on disk."})
    max_minutes: float = field(default=0.0, metadata={"help": "Stop after this many minutes (0 = no limit)."})
    deterministic: bool = field(default=False, metadata={"help": "torch deterministic algorithms."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0 = torch's default)."})
    host_malloc: str = field(default="auto", metadata={
        "help": "glibc malloc keeps large freed blocks for reuse instead of unmapping them: auto (on a CPU-only run) "
                "| reuse | default (genalign/core/hostmem.py)."})
    parts: Dict[str, PartConfig] = field(
        default_factory=dict, metadata={"help": "Per-part optimiser settings, e.g. parts.fake_score.learning_rate."})


@dataclass
class RunConfig:
    output_dir: str = field(default="runs/run", metadata={"help": "Run directory."})
    name: Optional[str] = field(default=None, metadata={"help": "Run name for trackers."})
    log_with: List[str] = field(
        default_factory=lambda: ["tensorboard"], metadata={"help": "accelerate trackers: tensorboard | wandb."}
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    overwrite: bool = field(default=False, metadata={"help": "Allow reusing a non-empty output_dir."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})


@dataclass
class RewardSpec:
    name: str = ""
    weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmSpec:
    name: str = "grpo"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    task: str = field(default="t2i", metadata={"help": "t2i | t2a | gui."})
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    rewards: List[RewardSpec] = field(default_factory=list)
    reward_aggregation: str = field(
        default="sum_then_normalize", metadata={"help": "sum_then_normalize | normalize_then_sum."}
    )
    gui: Dict[str, Any] = field(default_factory=dict, metadata={"help": "GUI-grounding settings (task: gui)."})


# Tasks whose section has its own schema, validated by the named function (imported lazily, by path, so that the
# core schema never imports a track's modules).
TASK_VALIDATORS = {"gui": "genalign.gui.config:gui_config_from"}

ENUMS = {
    "task": ("t2i", "t2a", "gui"),
    "model.dtype": ("fp32", "fp16", "bf16"),
    "model.lora.init": ("gaussian", "default", "pissa"),
    "sampler.kernel": ("sde", "eta", "cps", "ddim", "ode"),
    "sampler.cps_logprob": ("simplified", "gaussian"),
    "sampler.logprob_reduce": ("mean", "sum"),
    "sampler.train_timesteps": ("all_but_last", "random_subset", "window", "sliding_window"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.host_malloc": ("auto", "reuse", "default"),
    "train.lr_schedule": ("constant", "linear", "cosine"),
    "reward_aggregation": ("sum_then_normalize", "normalize_then_sum"),
}

from .schema import _coerce, _field_names, _type_name, from_dict, to_dict  # noqa: E402,F401  (re-exported)

# ----------------------------------------------------------------------------------------------------------
# Loading, overrides, validation


def _parse_override(item: str):
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. train.learning_rate=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except _DuplicateKey as e:
        raise ConfigError(f"override '{item}' repeats the key '{e.key}'") from None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_path(d: Dict[str, Any], key: str, value) -> None:
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a valid list index")
            continue
        if p not in cur or cur[p] is None:
            cur[p] = {}
        cur = cur[p]
        if not isinstance(cur, (dict, list)):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
    last = parts[-1]
    if isinstance(cur, list):
        try:
            cur[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"override '{key}': '{last}' is not a valid list index")
    else:
        cur[last] = value


def _normalise_sections(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Accept the friendly YAML forms for algorithm and rewards:

    algorithm: {name: grpo, clip_range: 1e-4}      -> AlgorithmSpec(name, args={clip_range: ...})
    rewards: [{name: clip_score, weight: 1, model: ...}] or [clip_score]  -> RewardSpec(name, weight, args)
    """
    raw = dict(raw)
    alg = raw.get("algorithm")
    if isinstance(alg, str):
        raw["algorithm"] = {"name": alg, "args": {}}
    elif isinstance(alg, dict):
        alg = dict(alg)
        name = alg.pop("name", "grpo")
        args = dict(alg.pop("args", {}) or {})
        args.update(alg)
        raw["algorithm"] = {"name": name, "args": args}
    rew = raw.get("rewards")
    if isinstance(rew, (str, dict)):
        rew = [rew]
    if isinstance(rew, list):
        out = []
        for i, r in enumerate(rew):
            if isinstance(r, str):
                out.append({"name": r, "weight": 1.0, "args": {}})
            elif isinstance(r, dict):
                r = dict(r)
                if "name" not in r:
                    raise ConfigError(f"'rewards.{i}' needs a 'name'")
                name = r.pop("name")
                weight = r.pop("weight", 1.0)
                args = dict(r.pop("args", {}) or {})
                args.update(r)
                out.append({"name": name, "weight": weight, "args": args})
            else:
                raise ConfigError(f"'rewards.{i}' must be a reward name or a mapping, got {r!r}")
        raw["rewards"] = out
    return raw


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int):
        super().__init__(f"key {key!r} repeated at line {line}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with '<<' may be overridden on purpose
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader reports unhashable keys itself
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(stream):
    """``yaml.safe_load`` that raises on a repeated mapping key (``_DuplicateKey``, a ``yaml.YAMLError``)."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)


def load_yaml(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config path '{path}' is a directory, expected a YAML file")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = safe_load_unique(f)
    except _DuplicateKey as e:
        raise ConfigError(f"config file '{path}' repeats the key '{e.key}' at line {e.line}; each key may appear "
                          f"once per section (PyYAML would silently keep only the last)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping at top level, got {type(data).__name__}")
    return data


def build_config(raw: Dict[str, Any], overrides: List[str] = ()) -> Config:
    raw = _normalise_sections(raw)
    for item in overrides:
        key, value = _parse_override(item)
        # Friendly override paths into algorithm/reward args: algorithm.beta=0.04, rewards.0.model=...
        parts = key.split(".")
        if parts[0] == "algorithm" and len(parts) == 2 and parts[1] not in ("name", "args"):
            key = f"algorithm.args.{parts[1]}"
        if parts[0] == "rewards" and len(parts) == 3 and parts[2] not in ("name", "weight", "args"):
            key = f"rewards.{parts[1]}.args.{parts[2]}"
        _set_path(raw, key, value)
    cfg = from_dict(Config, raw)
    validate(cfg)
    return cfg


def load_config(path: Optional[str], overrides: List[str] = ()) -> Config:
    raw = load_yaml(path) if path else {}
    return build_config(raw, overrides)


def _get(cfg, dotted: str):
    cur = cfg
    for p in dotted.split("."):
        cur = getattr(cur, p)
    return cur


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(p):
    """A relative path that does not exist from the working directory but does from the genalign checkout
    (shipped assets, recipes) resolves to the latter, so recipes run from any directory."""
    if not isinstance(p, str) or not p or os.path.isabs(p) or os.path.exists(p):
        return p
    alt = os.path.join(PACKAGE_ROOT, p)
    return alt if os.path.exists(alt) else p


def validate(cfg: Config) -> None:
    """Semantic checks and registry look-ups; raises ConfigError with one line."""
    from .registry import ALGORITHMS, MODELS, REWARDS

    cfg.data.prompts = resolve_path(cfg.data.prompts)
    cfg.data.eval_prompts = resolve_path(cfg.data.eval_prompts)
    cfg.model.path = resolve_path(cfg.model.path)

    for key, valid in ENUMS.items():
        v = _get(cfg, key)
        if v not in valid:
            raise ConfigError(f"'{key}' is '{v}'; valid choices: {choices(valid)}")
    positive = [
        "sampler.num_steps", "sampler.eval_num_steps", "data.group_size", "data.prompts_per_iteration",
        "train.iterations", "train.rollout_batch_size", "train.train_batch_size",
        "train.optimizer_steps_per_iteration", "train.inner_epochs", "model.height", "model.width",
    ]
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"'{key}' must be > 0, got {_get(cfg, key)}")
    if not 0.0 < cfg.sampler.timestep_fraction <= 1.0:
        raise ConfigError(f"'sampler.timestep_fraction' must be in (0, 1], got {cfg.sampler.timestep_fraction}")
    if not 0.0 <= cfg.train.ema.decay < 1.0:
        raise ConfigError(f"'train.ema.decay' must be in [0, 1), got {cfg.train.ema.decay}")
    if cfg.model.lora.rank < 0:
        raise ConfigError(f"'model.lora.rank' must be >= 0 (0 = full fine-tuning), got {cfg.model.lora.rank}")
    from .config_checks import check_family_matches_pipeline, check_values

    check_values(cfg)  # ranges, finiteness, non-empty lists (one line naming key, value and what is allowed)
    for t in cfg.run.log_with:
        if t not in ("tensorboard", "wandb", "none"):
            raise ConfigError(f"'run.log_with' has '{t}'; valid choices: none, tensorboard, wandb")
    if cfg.task in TASK_VALIDATORS:  # tasks with their own schema (the GUI track) validate their own section
        from .registry import _import_path

        _import_path(TASK_VALIDATORS[cfg.task], "task validator")(cfg)
        return
    fam = MODELS.get(cfg.model.family)  # raises with the valid choices (or imports a dotted path)
    check_family_matches_pipeline(cfg.model.family, cfg.model.path, fam)  # model_index.json names the class
    law = getattr(fam, "law_class", None)  # the family's noise law class: its kernels, without loading a model
    kernels = getattr(law, "kernels", None)
    if kernels and cfg.sampler.kernel not in kernels:
        raise ConfigError(f"'sampler.kernel' is '{cfg.sampler.kernel}', which '{cfg.model.family}' models "
                          f"({law.description}) do not support; valid choices: {choices(kernels)}")
    alg_cls = ALGORITHMS.get(cfg.algorithm.name)
    from .config_checks import check_expert_window

    check_expert_window(cfg, bool(getattr(make_algorithm(alg_cls, cfg.algorithm.args), "needs_log_probs", True)))
    if not cfg.rewards and getattr(alg_cls, "needs_rewards", True):
        raise ConfigError(f"'rewards' is empty; name at least one of: {choices(REWARDS.names())}")
    made = getattr(fam, "modality", "image")  # a class attribute: known without loading the model
    for i, spec in enumerate(cfg.rewards):
        rcls = REWARDS.get(spec.name)
        check_kwargs(rcls, spec.args, f"rewards.{i}")
        declared = getattr(rcls, "declared_modality", None)
        scores = declared(spec.args) if callable(declared) else getattr(rcls, "modality", "any")
        if scores not in ("any", made):
            raise ConfigError(f"reward '{spec.name}' (rewards.{i}) scores {scores}, but model family "
                              f"'{cfg.model.family}' generates {made}; choose a reward for {made}")
    if made == "audio":  # a reward's sample rate against the generator's (one-line error on a mismatch)
        from .config_checks import check_reward_sample_rates

        check_reward_sample_rates(cfg.model.sample_rate or _pipeline_sample_rate(cfg.model.path), cfg.rewards,
                                  cfg.model.family)
    if not cfg.data.prompts:
        raise ConfigError("'data.prompts' is empty; give a prompts file (.txt/.jsonl) or a list of prompts")
    if isinstance(cfg.data.prompts, str) and not os.path.exists(cfg.data.prompts):
        raise ConfigError(f"'data.prompts' file '{cfg.data.prompts}' does not exist")


def _pipeline_sample_rate(path: str) -> Optional[int]:
    """A local audio pipeline's output rate (its VAE config's ``sampling_rate``), None when not readable here."""
    f = os.path.join(path or "", "vae", "config.json")
    try:
        with open(f) as fh:
            rate = json.load(fh).get("sampling_rate")
    except (OSError, ValueError):
        return None
    return None if rate is None else int(rate)


def make_algorithm(alg_cls, args: Dict[str, Any]):
    """Instantiate an algorithm dataclass from its config args, with typed validation."""
    if dataclasses.is_dataclass(alg_cls):
        return from_dict(alg_cls, args, prefix="algorithm.")
    check_kwargs(alg_cls, args, "algorithm")
    return alg_cls(**args)


def check_kwargs(cls, args: Dict[str, Any], where: str) -> None:
    """Check that ``args`` are accepted by ``cls``'s constructor; unknown ones raise ConfigError."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for k in args:
        if k not in valid:
            raise ConfigError(f"unknown key '{where}.{k}' for '{getattr(cls, 'registry_name', cls.__name__)}'; "
                              f"valid keys: {choices(valid) or '(none)'}")


def save_config(cfg: Config, path: str) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
