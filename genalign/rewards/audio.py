"""Audio rewards for real text-to-audio models (METHODS §15).

``clap_score``: the cosine between a cross-modal encoder's text embedding of the prompt and its audio embedding of
the clip (Wu et al., CLAP, arXiv 2211.06687; the CLAP score of text-to-audio evaluation). The encoder is any
registered audio encoder with a text tower: ``clap`` (transformers ``ClapModel``; audio mixed to mono and
resampled to the model's rate by the encoder) or, offline, the toy ``tones`` encoder.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import REWARDS
from .base import Reward


@REWARDS.register("clap_score")
class ClapScoreReward(Reward):
    """cos(E_text(prompt), E_audio(clip)) in [-1, 1]; ``encoder_args`` go to the encoder (e.g. ``model``,
    ``sample_rate``: the generator's output rate, 44100 for Stable Audio Open)."""

    modality = "audio"

    def __init__(self, encoder: str = "clap", encoder_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from .encoders import build_encoder

        self.encoder = build_encoder(encoder, encoder_args)
        if getattr(self.encoder, "modality", "audio") != "audio" or not hasattr(self.encoder, "encode_text"):
            raise ConfigError(f"clap_score: encoder '{encoder}' must embed audio and text (valid: clap, tones)")

    def to(self, device) -> "ClapScoreReward":
        super().to(device)
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def score(self, samples, prompts, metadata):
        a = F.normalize(self.encoder.encode(samples).float(), dim=-1)
        t = F.normalize(self.encoder.encode_text(list(prompts)).float(), dim=-1)
        return (a * t.to(a.device)).sum(-1).cpu()


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
    the reward constructor's default; None when it does not say (e.g. an image reward or a plain callable)."""
    args = dict(args or {})
    if args.get("sample_rate") is not None:
        return int(args["sample_rate"])
    enc = args.get("encoder", _default_arg(rcls, "encoder"))
    if isinstance(enc, str):
        from .encoders import ENCODERS, encoder_modality

        if encoder_modality(enc) == "audio":
            rate = (args.get("encoder_args") or {}).get("sample_rate")
            rate = rate if rate is not None else _default_arg(ENCODERS.get(enc), "sample_rate")
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
    from ..registry import REWARDS

    for i, spec in enumerate(specs):
        rate = declared_sample_rate(REWARDS.get(spec.name), spec.args)
        if rate is not None and int(rate) != int(model_rate):
            where = "encoder_args.sample_rate" if "encoder" in spec.args or "encoder_args" in spec.args else "sample_rate"
            raise ConfigError(f"reward '{spec.name}' (rewards.{i}) reads audio at {rate} Hz, but model family "
                              f"'{family}' generates {int(model_rate)} Hz; set rewards.{i}.args.{where}: {int(model_rate)}")
