"""Where the toy world's shipped assets live, and loaders for them.

Assets are small files in the repository's ``assets/`` folder (next to the ``genalign`` package; the package is
installed editable), rebuilt by ``scripts/build_toy_assets.py``:

    assets/toy/digits_flow/   StableDiffusion3Pipeline (rectified flow), DiffusionPipeline.from_pretrained-loadable
    assets/toy/digits_eps/    StableDiffusionPipeline (ε-prediction, DDIM)
    assets/toy/classifier/    the digit classifier (config.json + model.safetensors)
    assets/toy/prompts/       train.txt, eval.txt
    assets/toy/manifest.json  how they were built and what they measure

``GENALIGN_ASSETS`` (an environment variable) points elsewhere when set.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import CheckpointError

FLOW_PIPELINE = ("toy", "digits_flow")
EPS_PIPELINE = ("toy", "digits_eps")
CLASSIFIER = ("toy", "classifier")
MANIFEST = ("toy", "manifest.json")


def assets_root() -> Path:
    env = os.environ.get("GENALIGN_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "assets"


def asset_path(*parts: str, must_exist: bool = True) -> str:
    """Absolute path of ``assets/<parts...>``; a missing one raises CheckpointError naming the build script."""
    path = assets_root().joinpath(*parts)
    if must_exist and not path.exists():
        raise CheckpointError(f"toy asset missing: {path} (rebuild with `python scripts/build_toy_assets.py`)")
    return str(path)


def load_manifest() -> Dict[str, Any]:
    path = asset_path(*MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt toy manifest {path}: {e}") from None


def load_flow_pipeline(path: Optional[str] = None, **kwargs):
    """The rectified-flow digits pipeline (``StableDiffusion3Pipeline``) via ``DiffusionPipeline.from_pretrained``."""
    from diffusers import DiffusionPipeline

    kwargs.setdefault("text_encoder_3", None)  # the toy SD3 has no T5: diffusers needs these passed explicitly
    kwargs.setdefault("tokenizer_3", None)
    return DiffusionPipeline.from_pretrained(path or asset_path(*FLOW_PIPELINE), **kwargs)


def load_eps_pipeline(path: Optional[str] = None, **kwargs):
    """The ε-prediction digits pipeline (``StableDiffusionPipeline`` + DDIM) via ``from_pretrained``."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path or asset_path(*EPS_PIPELINE), **kwargs)


@lru_cache(maxsize=8)
def _cached_classifier(path: str, device: str):
    from .classifier import DigitClassifier

    model = DigitClassifier.load(path).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_classifier(path: Optional[str] = None, device="cpu"):
    """The shipped digit classifier (eval mode, frozen; cached per path and device — never modify it in place)."""
    import torch

    return _cached_classifier(path or asset_path(*CLASSIFIER), str(torch.device(device)))
