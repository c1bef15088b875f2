"""The tones world's encoder for distributional rewards: the shipped toy CLAP (:mod:`.clap`), cross-modal, so
FAD-style set rewards (``fd``, ``mmd``, ``fd_contribution``, ...) and DRAGON's text exemplars work on audio.
Registered as ``encoder: tones``."""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from ..rewards.encoders import ENCODERS, Encoder
from .data import SAMPLE_RATE


@ENCODERS.register("tones")
class TonesEncoder(Encoder):
    """Toy-CLAP audio embeddings of waveforms (N, C, L) in [-1, 1] at ``sample_rate`` Hz (resampled to 8 kHz
    if different), and text embeddings of captions; both L2-normalised, dimension 32."""

    modality = "audio"

    def __init__(self, path: Optional[str] = None, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        from .assets import CLAP, tones_asset

        self.path = path or tones_asset(CLAP)
        self.sample_rate = int(sample_rate)
        with open(self.path, "rb") as f:  # the weights' hash keys the exemplar-embedding cache
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        self.id = f"tones-clap:{digest}:{self.sample_rate}"

    @property
    def model(self):
        from .clap import load_clap

        return load_clap(self.path, self.device)

    def to(self, device):
        self.device = torch.device(device)  # the cached model moves on next use
        return self

    def encode(self, samples):
        return self.model.embed_audio(samples.to(self.device), self.sample_rate)

    def encode_text(self, texts):
        return self.model.embed_text(list(texts))
