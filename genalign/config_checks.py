"""Value checks of a run config: ranges, finiteness, non-empty lists and cross-field checks, run by
:func:`genalign.config.validate` before any model loads. Each failure is one :class:`ConfigError` line naming the
key, the value and what is allowed:

    'train.adam_betas.1' is 1.5; allowed: a number in [0, 1)

Types were already checked by the schema (genalign/schema.py); this is the semantic layer on top. Checks that
need the model itself (LoRA target modules matching at least one module) live where the model is built
(``Generator._setup_trainable``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

from .errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range, which accelerate.set_seed feeds


def _interval(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def check_number(key: str, v: Any, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
                 hi_open: bool = False, integer: bool = False) -> None:
    """Raise a one-line ConfigError unless ``v`` is a finite number in the interval."""
    bounds = _interval(lo, hi, lo_open, hi_open)
    what = f"a finite {'integer' if integer else 'number'}" if bounds == "finite" else \
        f"{'an integer' if integer else 'a number'} {bounds}"
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        raise ConfigError(f"'{key}' is {v!r}; allowed: {what}")


def _betas(key: str, betas) -> None:
    if betas is None:
        return
    if len(betas) != 2:
        raise ConfigError(f"'{key}' is {betas}; allowed: two numbers in [0, 1), e.g. [0.9, 0.999]")
    for i, b in enumerate(betas):
        check_number(f"{key}.{i}", b, 0.0, 1.0, hi_open=True)


def _optimizer(prefix: str, lr, betas, wd, clip, ema) -> None:
    if lr is not None:
        check_number(f"{prefix}.learning_rate", lr, 0.0, lo_open=True)
    _betas(f"{prefix}.adam_betas", betas)
    if wd is not None:
        check_number(f"{prefix}.weight_decay", wd, 0.0)
    if clip is not None:
        check_number(f"{prefix}.max_grad_norm", clip, 0.0)
    if ema is not None:
        check_number(f"{prefix}.ema_decay" if "parts" in prefix else f"{prefix}.ema.decay", ema, 0.0, 1.0,
                     hi_open=True)


def _seed(key: str, v) -> None:
    check_number(key, v, 0, SEED_MAX, integer=True)


def check_values(cfg) -> None:
    """Ranges and finiteness of every numeric setting (one line per failure, the first one found)."""
    t, s, d, m = cfg.train, cfg.sampler, cfg.data, cfg.model
    _optimizer("train", t.learning_rate, t.adam_betas, t.weight_decay, t.max_grad_norm, t.ema.decay)
    for name, pc in (t.parts or {}).items():
        _optimizer(f"train.parts.{name}", pc.learning_rate, pc.adam_betas, pc.weight_decay, pc.max_grad_norm,
                   pc.ema_decay)
    _seed("train.seed", t.seed)
    for key in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints", "num_threads"):
        check_number(f"train.{key}", getattr(t, key), 0, integer=True)
    check_number("train.ema.every", t.ema.every, 0, lo_open=True, integer=True)
    check_number("train.max_minutes", t.max_minutes, 0.0)
    check_number("train.lr_min_ratio", t.lr_min_ratio, 0.0, 1.0)
    check_number("sampler.guidance_scale", s.guidance_scale, 0.0)
    check_number("sampler.noise_level", s.noise_level, 0.0)
    check_number("sampler.eta", s.eta, 0.0)
    if s.shift is not None:
        check_number("sampler.shift", s.shift, 0.0, lo_open=True)
    check_number("sampler.window_size", s.window_size, 0, lo_open=True, integer=True)
    check_number("sampler.window_range", s.window_range, 0.0, 1.0)
    if m.base_from is not None:
        check_number("model.base_from", m.base_from, 0.0, 1.0, lo_open=True, hi_open=True)
    if m.lora.rank > 0:
        check_number("model.lora.alpha", m.lora.alpha, 0.0, lo_open=True)
        check_number("model.lora.dropout", m.lora.dropout, 0.0, 1.0, hi_open=True)
        if m.lora.target_modules is not None and not m.lora.target_modules:
            raise ConfigError("'model.lora.target_modules' is []; allowed: null (the family's default) or a "
                              "non-empty list of module names")
    if m.max_sequence_length is not None:
        check_number("model.max_sequence_length", m.max_sequence_length, 0, lo_open=True, integer=True)
    if not d.eval_seeds:
        raise ConfigError("'data.eval_seeds' is []; allowed: a non-empty list of seeds, e.g. [0, 1, 2, 3]")
    for i, sd in enumerate(d.eval_seeds):
        _seed(f"data.eval_seeds.{i}", sd)
    if isinstance(d.eval_prompts, list) and not d.eval_prompts:
        raise ConfigError("'data.eval_prompts' is []; allowed: null (the first training prompts), a prompts file, "
                          "or a non-empty list")
    for key in ("prompts", "eval_prompts"):
        v = getattr(d, key)
        if isinstance(v, list):
            for i, p in enumerate(v):
                if isinstance(p, str) and not p.strip():
                    raise ConfigError(f"'data.{key}.{i}' is an empty prompt; allowed: non-empty text")
        elif isinstance(v, str) and key == "eval_prompts":
            if not os.path.exists(v):
                raise ConfigError(f"'data.eval_prompts' file '{v}' does not exist")
    check_number("data.real_batch_size", d.real_batch_size, 0, integer=True)
    for i, spec in enumerate(cfg.rewards):
        check_number(f"rewards.{i}.weight", spec.weight)
    if cfg.rewards and all(spec.weight == 0 for spec in cfg.rewards):
        raise ConfigError("every reward weight is 0 ('rewards.*.weight'); allowed: at least one non-zero weight")
    for k, v in (cfg.algorithm.args or {}).items():
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(f"'algorithm.{k}' is nan; allowed: a number")


def check_family_matches_pipeline(family: str, path, fam, key: str = "'model.family'") -> None:
    """A local pipeline folder's ``model_index.json`` names its pipeline class; the family must load that class
    (``family: sd3`` on an ε UNet pipeline would otherwise die inside diffusers)."""
    index = os.path.join(path, "model_index.json") if isinstance(path, str) and path else ""
    if not index or not os.path.isfile(index):
        return
    try:
        with open(index, "r", encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"'{path}': its model_index.json is unreadable or not JSON ({e})") from None
    pipe_class = getattr(fam, "pipe_class", None)
    if not isinstance(name, str) or pipe_class is None:
        return
    want = pipe_class()
    if want.__name__ in (name, "DiffusionPipeline"):
        return
    import diffusers

    found = getattr(diffusers, name, None)
    if isinstance(found, type) and issubclass(found, want):
        return
    from .registry import MODELS

    fits = []
    for fname in MODELS.names():
        try:
            pc = getattr(MODELS.get(fname), "pipe_class", None)
            if pc is not None and pc().__name__ == name:
                fits.append(fname)
        except Exception:  # noqa: BLE001 - a family whose pipeline class cannot be imported cannot fit
            continue
    hint = f"use family {', '.join(fits)}" if fits else "no registered family loads it"
    raise ConfigError(f"{key} is '{family}' (loads {want.__name__}), but '{path}' holds a "
                      f"{name} (model_index.json); {hint}")


def _default_arg(obj, name: str):
    """The default of constructor parameter ``name`` of ``obj`` (None if it has none or cannot be read)."""
    import inspect

    try:
        p = inspect.signature(obj).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def declared_sample_rate(rcls, args: Optional[Dict[str, Any]] = None) -> Optional[int]:
    """The rate (Hz) at which a reward with these config args reads waveforms, without building it: its
    ``sample_rate`` arg, else its audio encoder's (``encoder_args.sample_rate``, else that encoder's default), else
    the reward constructor's default; None when it does not say (e.g. an image reward or a plain callable) or its
    class sets ``rate_independent = True``."""
    args = dict(args or {})
    if getattr(rcls, "rate_independent", False):  # e.g. an RMS level: the same at any rate
        return None
    if args.get("sample_rate") is not None:
        return int(args["sample_rate"])
    enc = args.get("encoder", _default_arg(rcls, "encoder"))
    if isinstance(enc, str):
        from .registry import ENCODERS

        try:
            enc_cls = ENCODERS.get(enc)
        except Exception:  # noqa: BLE001 - unknown encoder: building the reward names the problem
            enc_cls = None
        if enc_cls is not None and getattr(enc_cls, "modality", "any") == "audio":
            rate = (args.get("encoder_args") or {}).get("sample_rate")
            rate = rate if rate is not None else _default_arg(enc_cls, "sample_rate")
            return None if rate is None else int(rate)
    rate = _default_arg(rcls, "sample_rate")
    return None if rate is None else int(rate)


def check_reward_sample_rates(model_rate: Optional[int], specs, family: str) -> None:
    """One-line ``ConfigError`` when a reward reads audio at another rate than the generator writes. The choice is
    an error, not silent resampling: a pitch or loudness reward read at the wrong rate is wrong by the rate ratio,
    and resampling a generator's output to a reward's rate is a modelling choice the recipe should state (give the
    reward ``sample_rate``: the model's rate; the audio encoders then resample to their own feature rate)."""
    if model_rate is None:
        return
    from .registry import REWARDS

    for i, spec in enumerate(specs):
        rate = declared_sample_rate(REWARDS.get(spec.name), spec.args)
        if rate is not None and int(rate) != int(model_rate):
            where = "encoder_args.sample_rate" if "encoder" in spec.args or "encoder_args" in spec.args else "sample_rate"
            raise ConfigError(f"reward '{spec.name}' (rewards.{i}) reads audio at {rate} Hz, but model family "
                              f"'{family}' generates {int(model_rate)} Hz; set rewards.{i}.args.{where}: {int(model_rate)}")


def check_expert_window(cfg, needs_log_probs: bool) -> None:
    """``model.base_from`` with a stochastic, trained rollout: its steps must end before the base's first (the same
    check the rollout makes, here before anything is loaded or written; a last step that the kernel makes
    deterministic anyway is left to the rollout's exact check)."""
    f, s = cfg.model.base_from, cfg.sampler
    if f is None or not needs_log_probs:
        return
    from .core.planning import window_starts
    from .models.experts import first_base_step, overlap_error

    T = s.num_steps
    k0 = first_base_step(f, T)
    if s.train_timesteps == "window":
        end = min(T - 1, window_starts(s) - 1 + s.window_size)  # the latest window's end (exclusive)
        if end > k0:
            raise overlap_error(f, T, end - 1)
    elif k0 < T - 1:
        raise overlap_error(f, T, T - 2, f" (sampler.train_timesteps '{s.train_timesteps}')")
