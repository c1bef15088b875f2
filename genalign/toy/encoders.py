"""The toy world's feature encoder for distributional rewards: the shipped digit classifier's penultimate
features (the same features the toy Fréchet distance uses). Registered as ``encoder: digits``."""

from __future__ import annotations

from ..rewards.encoders import ENCODERS, Encoder
from .metrics import digit_features


@ENCODERS.register("digits")
class DigitsEncoder(Encoder):
    modality = "image"
    id = "toy-digit-classifier"

    def encode(self, samples):
        return digit_features(samples.to(self.device))
