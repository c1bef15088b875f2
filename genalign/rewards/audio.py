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

