"""Build the ``tones`` world's assets: the toy CLAP, the real reference set, the staccato exemplars, prompts, and
a manifest of how they were built and what they measure (run by ``scripts/build_tones_assets.py``).

Every random draw is seeded from ``BuildConfig.seed`` (clip streams: train 1000+seed, held-out evaluation
2000+seed, real set 3000+seed, staccato exemplars 4000+seed, in-distribution evaluation 5000+seed); with the
same torch version and thread count every stored tensor is identical (checked: two builds, max difference 0; the
file bytes can still differ, because safetensors writes its metadata entries in arbitrary order).

Evaluation (stored in the manifest; the tests re-measure it): top-1 caption retrieval of
``eval_clips_per_caption`` fresh clips of each of the 72 **held-out** captions (never seen in training), among
all 432 captions (chance 1/432) and among the 72 held-out ones (chance 1/72), with per-attribute agreement;
and the same for fresh clips of training captions.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import torch

from . import data as D
from .clap import TonesClap, retrieval_accuracy, train_clap


@dataclass
class BuildConfig:
    seed: int = 0
    threads: int = 1
    train_clips: int = 6000
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    eval_clips_per_caption: int = 4
    real_clips: int = 160
    staccato_clips: int = 64
    pitch_floor: float = 1e-2  # the CLAP's pitch-feature floor (genalign.tones.clap module doc)


def _features(model: TonesClap, wav: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.audio_features(wav[i:i + chunk]) for i in range(0, wav.shape[0], chunk)])


def _label_index(labels: List[D.ToneLabel]) -> torch.Tensor:
    return torch.tensor([lab.index for lab in labels], dtype=torch.int64)


def write_reference(path: str, model: TonesClap, wav: torch.Tensor, labels: List[D.ToneLabel], what: str) -> None:
    """``{waveforms float16, label_index, embeddings}`` + metadata, written atomically."""
    from safetensors.torch import save

    from ..io import atomic_write_bytes

    with torch.no_grad():
        emb = model.embed_audio(wav)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {"what": what, "sample_rate": str(D.SAMPLE_RATE), "count": str(wav.shape[0]), "encoder": "tones",
            "label_index": "root, kind, timbre, articulation indices into genalign.tones.data tuples"}
    atomic_write_bytes(path, save({"waveforms": wav.half().contiguous(), "label_index": _label_index(labels),
                                   "embeddings": emb.float().contiguous()}, metadata=meta))


def _file_info(path: str) -> Dict[str, Any]:
    with open(path, "rb") as f:
        data = f.read()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def eval_sets(seed: int, per_caption: int):
    """The manifest's evaluation clips: ``{"heldout": (wav, labels), "train": (wav, labels)}``."""
    held = [lab for lab in D.split_labels("eval") for _ in range(per_caption)]
    train = D.sample_labels(len(held), "train", 5000 + seed)
    return {"heldout": (D.make_clips(held, 2000 + seed), held), "train": (D.make_clips(train, 5000 + seed), train)}


def evaluate(model: TonesClap, seed: int, per_caption: int) -> Dict[str, Any]:
    sets = eval_sets(seed, per_caption)
    everything, held_caps = D.all_labels(), D.split_labels("eval")
    return {
        "heldout_clips_vs_all_captions": retrieval_accuracy(model, *sets["heldout"], everything),
        "heldout_clips_vs_heldout_captions": retrieval_accuracy(model, *sets["heldout"], held_caps),
        "train_caption_clips_vs_all_captions": retrieval_accuracy(model, *sets["train"], everything),
        "clips_per_set": len(sets["heldout"][1]),
    }


def train_build_clap(cfg: BuildConfig = BuildConfig(), log=None, times: Optional[Dict[str, float]] = None
                     ) -> Dict[str, Any]:
    """The toy CLAP of a build: ``cfg``'s seeded training clips, their features (the front-end has no weights) and
    :func:`.clap.train_clap` with ``cfg``'s steps, batch, lr and ``pitch_floor``. Returns train_clap's result.
    ``times`` (if given) receives ``data_s`` and ``train_s``."""
    t0 = time.time()
    wav, labels = D.make_dataset(cfg.train_clips, "train", 1000 + cfg.seed)
    clap_cfg = {"pitch_floor": cfg.pitch_floor}
    feats = _features(TonesClap(clap_cfg), wav)
    t1 = time.time()
    if log is not None:
        log(f"{cfg.train_clips} training clips + features in {t1 - t0:.1f}s")
    res = train_clap(feats, [lab.caption for lab in labels], cfg.steps, cfg.batch_size, cfg.lr, cfg.seed,
                     config=clap_cfg, log_every=max(1, cfg.steps // 10) if log is not None else 0)
    if times is not None:
        times.update(data_s=t1 - t0, train_s=time.time() - t1)
    return res


def build_assets(out_dir: str, cfg: BuildConfig = BuildConfig(), log=print) -> Dict[str, Any]:
    from ..io import atomic_write_json

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    times: Dict[str, float] = {}

    res = train_build_clap(cfg, log, times)
    model = res["model"]
    metrics = evaluate(model, cfg.seed, cfg.eval_clips_per_caption)
    log(f"held-out retrieval: {metrics['heldout_clips_vs_all_captions']}")

    clap_path = os.path.join(out_dir, "clap.safetensors")
    model.save(clap_path, {"seed": cfg.seed, "steps": cfg.steps})
    real_labels = D.sample_labels(cfg.real_clips, "all", 3000 + cfg.seed)
    write_reference(os.path.join(out_dir, "real.safetensors"), model, D.make_clips(real_labels, 3000 + cfg.seed),
                    real_labels, "real tones clips, uniform over all 432 combinations")
    stacc = [lab for lab in D.all_labels() if lab.articulation == "staccato"]
    idx = torch.randint(len(stacc), (cfg.staccato_clips,), generator=torch.Generator().manual_seed(4000 + cfg.seed))
    st_labels = [stacc[i] for i in idx.tolist()]
    write_reference(os.path.join(out_dir, "exemplars", "staccato.safetensors"), model,
                    D.make_clips(st_labels, 4000 + cfg.seed), st_labels, "staccato-only tones clips (DRAGON exemplars)")
    prompts = D.write_prompt_files(os.path.join(out_dir, "prompts"))
    times["total_s"] = time.time() - t0

    files = {os.path.relpath(p, out_dir): _file_info(p) for p in
             [clap_path, os.path.join(out_dir, "real.safetensors"),
              os.path.join(out_dir, "exemplars", "staccato.safetensors"), *prompts.values()]}
    n_params = sum(p.numel() for p in model.parameters())
    manifest = {
        "what": "tones toy world (text-to-music): toy CLAP + reference clips; see genalign/tones/",
        "build": asdict(cfg), "clap_config": model.config, "clap_params": n_params,
        "clap_loss": {"first_50": sum(res["losses"][:50]) / 50, "last_50": sum(res["losses"][-50:]) / 50},
        "retrieval": metrics, "files": files, "build_time_s": times,
        "data": {"sample_rate": D.SAMPLE_RATE, "clip_len": D.CLIP_LEN, "train_captions": len(D.split_labels("train")),
                 "eval_captions": len(D.split_labels("eval"))},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest
