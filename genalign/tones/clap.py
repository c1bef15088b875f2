"""A toy CLAP for the ``tones`` world: a small joint text–audio encoder trained contrastively (InfoNCE).

Audio tower (waveforms (N, C, L) in [-1, 1] at 8 kHz; mono mix; any length ≥ 1 frame):

* **pitch features** — the Hann-windowed power spectrum of the whole clip, pooled by a triangular filterbank
  with centres every half semitone from MIDI ``midi_lo`` to ``midi_hi`` (48..110, i.e. 131 Hz..3.7 kHz,
  edges at the neighbouring centres), as ``log(band / total + pitch_floor)`` — loudness-invariant; a 1 s clip
  resolves 1 Hz, well inside a half semitone at the lowest band. ``pitch_floor`` is 1e-2 (−20 dB of the clip's
  power; the role of VGGish's ``log(mel + 0.01)`` offset): with the first build's 1e-6 (−60 dB) the features were
  dominated by the generator's noise floor between the harmonics, which no listener hears, so that a FAD on
  them ranked clips by that floor rather than by pitch, timbre or articulation (the base prompted for staccato
  sat further from the staccato exemplars than the base prompted for legato: 1.67 vs 1.56; with 1e-2: 0.47 vs
  0.78 — ``scripts/bench/tones_fad_floor.py --floors``). Files built before the floor was configurable load
  with their own 1e-6 (:data:`LEGACY_FLOORS`);
* **envelope features** — the clip cut into ``env_frames`` (64) equal frames, frame RMS in dB relative to the
  loudest frame, floored at ``env_floor_db`` (−60 dB), scaled to [−1, 0] (articulation: attack and duration);
* an MLP (LayerNorm → Linear → GELU → Linear → GELU → Linear) to a ``dim``-dimensional, L2-normalised embedding.

Text tower: captions tokenised into the caption grammar's words (:func:`tokenize`: upper-case ``A``..``G`` with
an optional ``#``/``b`` are pitch tokens, other words lower-cased, unknown words → ``<unk>``), mean of word
embeddings (a bag of words: the grammar's captions differ in their word sets) → MLP → L2-normalised embedding.

Loss: the symmetric InfoNCE of CLIP/CLAP (Radford et al. 2021, eq. in Fig. 3; Elizalde et al. 2023 §2) with a
learned logit scale; clips that share a caption in a batch are all positives (the target is uniform over them).
Weights ship as ``clap.safetensors`` with the config and vocabulary in its safetensors metadata (no pickle).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, GenalignError
from .data import ARTICULATIONS, KIND_NAMES, PITCH_NAMES, SAMPLE_RATE, TIMBRES, parse_pitch

DEFAULT_CONFIG: Dict[str, Any] = {"sample_rate": SAMPLE_RATE, "midi_lo": 48.0, "midi_hi": 110.0, "midi_step": 0.5,
                                  "env_frames": 64, "hidden": 256, "dim": 32, "word_dim": 64,
                                  "pitch_floor": 1e-2, "env_floor_db": -60.0}
# What a CLAP file built before the floors were configurable used (its stored config has no floor keys).
LEGACY_FLOORS: Dict[str, Any] = {"pitch_floor": 1e-6, "env_floor_db": -60.0}

_PITCH_TOKEN = re.compile(r"^[A-G](#|b)?$")


def vocabulary() -> List[str]:
    """The caption grammar's words: ``<unk>``, the 12 pitch tokens, then the other words, sorted."""
    words = {"a", "an", "on", "note", "chord"} | set(TIMBRES) | set(ARTICULATIONS)
    for k in KIND_NAMES:
        words |= set(k.split())
    return ["<unk>"] + [f"pitch:{p}" for p in PITCH_NAMES] + sorted(words)


def tokenize(caption: str) -> List[str]:
    """Caption -> grammar tokens (pitch names normalised to sharps: ``Db`` -> ``pitch:C#``)."""
    out = []
    for w in re.findall(r"[A-Za-z]+#?", caption):
        if _PITCH_TOKEN.match(w):
            out.append(f"pitch:{PITCH_NAMES[parse_pitch(w)]}")
        else:
            out.append(w.lower())
    return out


def semitone_filterbank(n_bins: int, sample_rate: int, midi_lo: float, midi_hi: float, step: float) -> torch.Tensor:
    """(n_bands, n_bins) triangular filters on a MIDI (log-frequency) axis over rfft bins of a signal."""
    freqs = torch.linspace(0, sample_rate / 2, n_bins, dtype=torch.float64)
    midi = 69.0 + 12.0 * torch.log2(freqs.clamp(min=1e-3) / 440.0)
    centres = torch.arange(midi_lo, midi_hi + 1e-9, step, dtype=torch.float64)
    fb = (1.0 - (midi[None] - centres[:, None]).abs() / step).clamp(min=0.0)
    return fb.float()


class AudioTower(nn.Module):
    def __init__(self, cfg: Dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        n_bands = len(torch.arange(cfg["midi_lo"], cfg["midi_hi"] + 1e-9, cfg["midi_step"]))
        n_in = n_bands + int(cfg["env_frames"])
        h = int(cfg["hidden"])
        self.net = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                 nn.Linear(h, int(cfg["dim"])))
        self._fb: Dict[int, torch.Tensor] = {}

    def _filterbank(self, n_bins: int, device) -> torch.Tensor:
        if n_bins not in self._fb:
            c = self.cfg
            self._fb[n_bins] = semitone_filterbank(n_bins, c["sample_rate"], c["midi_lo"], c["midi_hi"], c["midi_step"])
        return self._fb[n_bins].to(device)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(N, L) mono at the config's sample rate -> (N, n_bands + env_frames) features."""
        n_frames = int(self.cfg["env_frames"])
        if wave.shape[-1] < n_frames:
            raise GenalignError(f"tones CLAP needs clips of at least {n_frames} samples, got {wave.shape[-1]}")
        wave = wave.float()
        win = torch.hann_window(wave.shape[-1], periodic=False, device=wave.device)
        power = torch.fft.rfft(wave * win, dim=-1).abs().pow(2)
        bands = power @ self._filterbank(power.shape[-1], wave.device).T
        pitch = torch.log(bands / (bands.sum(-1, keepdim=True) + 1e-12) + float(self.cfg["pitch_floor"]))
        usable = wave.shape[-1] // n_frames * n_frames
        rms = wave[:, :usable].reshape(wave.shape[0], n_frames, -1).pow(2).mean(-1)
        floor = float(self.cfg["env_floor_db"])
        db = 10 * torch.log10(rms / (rms.max(-1, keepdim=True).values + 1e-12) + 1e-6)
        env = db.clamp(min=floor) / -floor
        return torch.cat([pitch, env], dim=-1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feats), dim=-1)


class TextTower(nn.Module):
    def __init__(self, cfg: Dict[str, Any], vocab: Sequence[str]):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        d, h = int(cfg["word_dim"]), int(cfg["hidden"])
        self.emb = nn.EmbeddingBag(len(self.vocab), d, mode="mean")
        self.net = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, int(cfg["dim"])))

    def ids(self, captions: Sequence[str]):
        ids, offsets = [], []
        for c in captions:
            offsets.append(len(ids))
            toks = [self.index.get(t, 0) for t in tokenize(c)] or [0]
            ids.extend(toks)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids, offsets = self.ids(captions)
        dev = self.emb.weight.device
        return F.normalize(self.net(self.emb(ids.to(dev), offsets.to(dev))), dim=-1)


class TonesClap(nn.Module):
    """The joint encoder: ``embed_audio(waveforms, sample_rate)`` and ``embed_text(captions)`` -> unit rows."""

    def __init__(self, config: Optional[Dict[str, Any]] = None, vocab: Optional[Sequence[str]] = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.audio = AudioTower(self.config)
        self.text = TextTower(self.config, vocab or vocabulary())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def audio_features(self, samples: torch.Tensor, sample_rate: Optional[int] = None) -> torch.Tensor:
        """(N, C, L) waveforms -> mono at the model's rate -> features (polyphase resampling if needed)."""
        if samples.dim() != 3:
            raise ValueError(f"tones CLAP expects waveforms (N, C, L); got shape {tuple(samples.shape)}")
        wave = samples.float().mean(1)
        sr, own = int(sample_rate or self.config["sample_rate"]), int(self.config["sample_rate"])
        if sr != own:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(sr, own)
            wave = torch.from_numpy(resample_poly(wave.detach().cpu().double().numpy(), own // g, sr // g, axis=-1))
            wave = wave.float().to(samples.device)
        return self.audio.features(wave)

    def embed_audio(self, samples: torch.Tensor, sample_rate: Optional[int] = None) -> torch.Tensor:
        return self.audio(self.audio_features(samples, sample_rate))

    def embed_text(self, captions: Sequence[str]) -> torch.Tensor:
        return self.text(list(captions))

    def save(self, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
        from safetensors.torch import save

        from ..io import atomic_write_bytes

        meta = {"config": json.dumps(self.config), "vocab": json.dumps(self.text.vocab),
                "format": "genalign-tones-clap-1"}
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in self.state_dict().items()}, metadata=meta))

    @classmethod
    def load(cls, path: str) -> "TonesClap":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
            raise CheckpointError(f"cannot read tones CLAP '{path}': {e}") from None
        if meta.get("format") != "genalign-tones-clap-1":
            raise CheckpointError(f"'{path}' is not a tones CLAP file (no 'genalign-tones-clap-1' metadata)")
        model = cls({**LEGACY_FLOORS, **json.loads(meta["config"])}, json.loads(meta["vocab"]))
        model.load_state_dict(state)
        return model.eval()


def clip_loss(audio: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021): cross-entropy of ``scale · a_i·t_j`` both ways; the target
    of row i is uniform over the columns j with the same caption as i (duplicates in a batch are positives)."""
    logits = logit_scale.exp().clamp(max=100.0) * audio @ text.T
    same = (caption_ids[:, None] == caption_ids[None]).float()
    target = same / same.sum(-1, keepdim=True)
    a2t = -(target * logits.log_softmax(-1)).sum(-1).mean()
    t2a = -(target * logits.T.log_softmax(-1)).sum(-1).mean()
    return (a2t + t2a) / 2


def train_clap(features: torch.Tensor, captions: Sequence[str], steps: int = 1500, batch_size: int = 256,
               lr: float = 2e-3, seed: int = 0, config: Optional[Dict[str, Any]] = None, log_every: int = 0) -> Dict[str, Any]:
    """Train a :class:`TonesClap` on precomputed audio features (N, F) and their captions; returns
    ``{"model", "losses"}``. AdamW, cosine learning-rate decay, batches drawn with a seeded generator."""
    torch.manual_seed(seed)
    model = TonesClap(config)
    uniq = sorted(set(captions))
    cid = torch.tensor([uniq.index(c) for c in captions])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(features.shape[0], (batch_size,), generator=g)
        a = model.audio(features[idx])
        t = model.text([captions[i] for i in idx.tolist()])
        loss = clip_loss(a, t, cid[idx], model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"clap step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    return {"model": model.eval(), "losses": losses}


@torch.no_grad()
def retrieval_accuracy(model: TonesClap, waveforms: torch.Tensor, labels: Sequence, candidates: Sequence) -> Dict[str, float]:
    """Top-1 caption retrieval of clips among ``candidates`` (labels with ``.caption``): the share of clips whose
    best-scoring caption is their own, and per attribute the share whose retrieved label agrees on it."""
    a = model.embed_audio(waveforms)
    t = model.embed_text([c.caption for c in candidates])
    best = (a @ t.T).argmax(-1).tolist()
    got = [candidates[i] for i in best]
    n = len(labels)
    out = {"top1": sum(g.caption == lab.caption for g, lab in zip(got, labels)) / n, "chance": 1.0 / len(candidates)}
    for attr in ("root", "kind", "timbre", "articulation"):
        out[attr] = sum(getattr(g, attr) == getattr(lab, attr) for g, lab in zip(got, labels)) / n
    return out


@lru_cache(maxsize=8)
def _cached(path: str, device: str) -> TonesClap:
    model = TonesClap.load(path).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_clap(path: Optional[str] = None, device="cpu") -> TonesClap:
    """The shipped toy CLAP (eval mode, frozen; cached per path and device — never modify it in place)."""
    from .assets import CLAP, tones_asset

    return _cached(path or tones_asset(CLAP), str(torch.device(device)))
