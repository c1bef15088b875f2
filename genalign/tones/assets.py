"""Where the ``tones`` world's shipped assets live, and loaders for them (rebuilt by
``scripts/build_tones_assets.py``; ``GENALIGN_ASSETS`` points elsewhere when set, as for the digits world):

    assets/tones/clap.safetensors                the toy CLAP (config + vocabulary in its metadata)
    assets/tones/real.safetensors                real (generator) clips: waveforms, label_index, embeddings
    assets/tones/exemplars/staccato.safetensors  staccato-only clips, same keys
    assets/tones/prompts/{train,eval}.txt        the caption lists
    assets/tones/manifest.json                   how they were built and what they measure

A reference file holds ``waveforms`` (M, 1, L) float16 at 8 kHz, ``label_index`` (M, 4) int64 (root, kind,
timbre, articulation indices into :mod:`.data`'s tuples) and ``embeddings`` (M, D): the toy CLAP's audio
embeddings, the key every distributional reward reads, so ``reference: assets/tones/real.safetensors`` with
``encoder: tones`` works as is.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import CheckpointError

CLAP = "clap.safetensors"
REAL = "real.safetensors"
STACCATO = "exemplars/staccato.safetensors"
MANIFEST = "manifest.json"


def tones_asset(name: str, must_exist: bool = True) -> str:
    """Absolute path of ``assets/tones/<name>``; a missing one raises CheckpointError naming the build script."""
    from ..toy.assets import assets_root

    path = assets_root().joinpath("tones", *name.split("/"))
    if must_exist and not path.exists():
        raise CheckpointError(f"tones asset missing: {path} (rebuild with `python scripts/build_tones_assets.py`)")
    return str(path)


def load_manifest() -> Dict[str, Any]:
    path = tones_asset(MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt tones manifest {path}: {e}") from None


def load_reference(name: str = REAL, path: Optional[str] = None) -> Tuple[torch.Tensor, List, torch.Tensor]:
    """``(waveforms (M, 1, L) float32, labels (ToneLabel), embeddings (M, D))`` of a shipped reference file."""
    from safetensors.torch import load_file

    from .data import ARTICULATIONS, KIND_NAMES, TIMBRES, ToneLabel

    p = path or tones_asset(name)
    try:
        d = load_file(p)
        wav, idx, emb = d["waveforms"].float(), d["label_index"], d["embeddings"].float()
    except Exception as e:  # OSError, KeyError, safetensors' SafetensorError
        raise CheckpointError(f"cannot read tones reference '{p}': {e}") from None
    labels = [ToneLabel(r, KIND_NAMES[k], TIMBRES[t], ARTICULATIONS[a]) for r, k, t, a in idx.tolist()]
    return wav, labels, emb
