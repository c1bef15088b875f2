"""Signal rewards of the ``tones`` toy world (registered in ``REWARDS``; see :mod:`genalign.rewards.base`).

All take waveforms (N, C, L) in [-1, 1] at ``sample_rate`` Hz (default 8 kHz, :data:`.data.SAMPLE_RATE`);
channels are averaged to mono. ``modality = "audio"``.

* ``tone_correctness`` — do the clip's spectral peaks sit at the notes the caption asks for? With P(f) the
  Hann-windowed power spectrum, E_tot the power in [``f_min``, BAND_LIMIT·sr], B(f) the bins within
  ±``tolerance_cents`` of f, notes f_1..f_K from the caption (:func:`.data.prompt_notes`):
  ``explained = P(∪_{i,h} B(h·f_i)) / E_tot`` (share of power at the expected notes' harmonics h = 1..8) and
  ``present_i = min(1, P(B(f_i)) / (presence · E_tot / K))`` (each expected fundamental carries at least a
  ``presence`` share of its 1/K part of the power); score = ``explained · mean_i present_i`` in [0, 1].
  A correct chord scores ≈ 1, a missing chord note costs 1/K, a wrong note costs its power share, a note an
  octave off fails ``present``. ``presence_pool: min`` takes ``min_i present_i`` instead of the mean: a clip
  missing one of the notes scores ≈ 0 rather than (K−1)/K — a training option (this project's) that leaves no
  partial credit for playing only some of the notes; evaluations keep the mean. ``presence_decades: D`` reads
  each note's ratio r_i = P(B(f_i)) / (presence · E_tot / K) on a log scale, ``clamp(1 + log10(r_i) / D, 0, 1)``,
  so that a note at 1 % or 0.1 % of its due power still differs (another training option). Silence scores 0.
  NaN when the prompt names no single note / interval / chord (and ``metadata[i]["midi_notes"]`` is absent).
  Differentiable (ratios of FFT powers).
* ``loudness`` — RMS level in dBFS, ``10·log10(mean x² + 1e-10)`` (−3.01 dB for a full-scale sine, −100 dB for
  silence); with ``target_db`` set, ``−|level − target_db|`` (0 at the target). Differentiable.
* ``onset_sharpness`` — attack steepness: the envelope is the frame RMS (``frame_ms`` frames, hop frame/2),
  t_a the time from its first crossing of 10 % of its peak to its first crossing of 90 %, score
  ``exp(−t_a / tau_ms)`` in (0, 1] (≈ 0.8 for the toy's 5 ms staccato attack, ≈ 0.15 for the 60 ms legato
  one; 0 for silence). With ``articulation_aware: true`` the score is read against the prompt: the score for
  "staccato" prompts, 1 − score for "legato" prompts, NaN for prompts naming neither. Not differentiable.
* ``tones_clap_score`` — cosine between the shipped toy CLAP's text and audio embeddings (:mod:`.clap`), in
  [-1, 1]; the toy counterpart of a CLAP score (METHODS.md §15). Not differentiable (through ``no_grad``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..registry import REWARDS
from ..rewards.base import Reward
from .data import ARTICULATIONS, BAND_LIMIT, MAX_HARMONIC, SAMPLE_RATE, find_attribute, midi_to_hz, prompt_notes


def mono(samples: torch.Tensor, what: str = "tones reward") -> torch.Tensor:
    """(N, C, L) -> (N, L) float channel mean; a one-line error for other shapes."""
    if samples.dim() != 3:
        raise ValueError(f"{what} expects waveforms (N, C, L); got shape {tuple(samples.shape)}")
    return samples.float().mean(dim=1)


def power_spectrum(wave: torch.Tensor, sample_rate: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hann-windowed power spectrum of (N, L) waveforms: ``(power (N, L//2+1), freqs (L//2+1,))``."""
    n = wave.shape[-1]
    win = torch.hann_window(n, periodic=False, dtype=wave.dtype, device=wave.device)
    power = torch.fft.rfft(wave * win, dim=-1).abs().pow(2)
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate).to(wave.device, wave.dtype)
    return power, freqs


def _bands(freqs: torch.Tensor, centres: Sequence[float], cents: float) -> torch.Tensor:
    """(len(centres), F) masks of the bins within ±cents of each centre frequency."""
    r = 2.0 ** (cents / 1200.0)
    c = torch.tensor(list(centres), dtype=freqs.dtype, device=freqs.device)[:, None]
    return (freqs[None] >= c / r) & (freqs[None] <= c * r)


def tone_correctness_factors(samples: torch.Tensor, notes: Sequence[Optional[Sequence[int]]],
                             sample_rate: int = SAMPLE_RATE, tolerance_cents: float = 50.0, presence: float = 0.25,
                             f_min: float = 50.0, max_harmonic: int = MAX_HARMONIC,
                             near_cents: Optional[float] = 150.0, presence_pool: str = "mean",
                             presence_decades: Optional[float] = None) -> torch.Tensor:
    """Per clip ``explained`` and ``present`` (module doc; their product is ``tone_correctness``; ``presence_pool``
    "min" takes the least present note instead of the mean over notes; ``presence_decades`` D reads each note's
    ratio r_i on a log scale, ``clamp(1 + log10(r_i) / D, 0, 1)``) and, unless
    ``near_cents`` is None (the reward itself skips it), the *near miss*: the share of in-range power within
    ±``near_cents`` of an expected harmonic but outside ±``tolerance_cents`` (a note played off pitch rather than a
    wrong note). Shape (N, 3), or (N, 2) without the near miss; a row is NaN when the prompt names no notes, zeros
    for silence."""
    wave = mono(samples, "tone_correctness")
    power, freqs = power_spectrum(wave, sample_rate)
    f_max = BAND_LIMIT * sample_rate
    in_range = (freqs >= f_min) & (freqs <= f_max)
    total = (power * in_range).sum(-1)
    out, width = [], 2 if near_cents is None else 3
    for i, midis in enumerate(notes):
        if midis is None or len(midis) == 0:
            out.append(torch.full((width,), float("nan"), device=wave.device))
            continue
        f0s = [midi_to_hz(m) for m in midis]
        harmonics = [h * f for f in f0s for h in range(1, max_harmonic + 1) if h * f <= f_max]
        hit = _bands(freqs, harmonics, tolerance_cents).any(0) & in_range
        tot = total[i]
        ok = tot > 1e-20
        safe = torch.where(ok, tot, torch.ones_like(tot))
        fund = (_bands(freqs, f0s, tolerance_cents).to(power.dtype) * power[i]).sum(-1)  # (K,)
        ratio = fund / (presence * safe / len(f0s))
        if presence_decades is None:
            present = torch.clamp(ratio, max=1.0)
        else:
            present = torch.clamp(1.0 + torch.log10(ratio.clamp_min(1e-30)) / presence_decades, 0.0, 1.0)
        parts = [(power[i] * hit).sum() / safe, present.min() if presence_pool == "min" else present.mean()]
        if near_cents is not None:
            near = _bands(freqs, harmonics, near_cents).any(0) & in_range & ~hit
            parts.append((power[i] * near).sum() / safe)
        row = torch.stack(parts)
        out.append(torch.where(ok, row, torch.zeros_like(row)))
    return torch.stack(out)


def tone_correctness_score(samples: torch.Tensor, notes: Sequence[Optional[Sequence[int]]], sample_rate: int = SAMPLE_RATE,
                           tolerance_cents: float = 50.0, presence: float = 0.25, f_min: float = 50.0,
                           max_harmonic: int = MAX_HARMONIC, presence_pool: str = "mean",
                           presence_decades: Optional[float] = None) -> torch.Tensor:
    """The ``tone_correctness`` score (module doc) of (N, C, L) waveforms for per-sample MIDI note lists:
    ``explained · present`` of :func:`tone_correctness_factors`."""
    f = tone_correctness_factors(samples, notes, sample_rate, tolerance_cents, presence, f_min, max_harmonic,
                                 near_cents=None, presence_pool=presence_pool, presence_decades=presence_decades)
    return f[:, 0] * f[:, 1]


def loudness_db(samples: torch.Tensor) -> torch.Tensor:
    """RMS level in dBFS per sample: ``10·log10(mean x² + 1e-10)`` over channels and time."""
    if samples.dim() != 3:
        raise ValueError(f"loudness expects waveforms (N, C, L); got shape {tuple(samples.shape)}")
    return 10.0 * torch.log10(samples.float().pow(2).mean(dim=(1, 2)) + 1e-10)


def frame_rms(wave: torch.Tensor, frame: int, hop: int) -> torch.Tensor:
    """(N, L) -> (N, T) RMS of frames of ``frame`` samples every ``hop`` (the tail is zero-padded)."""
    n = wave.shape[-1]
    pad = max(0, frame - n) + (-(max(n, frame) - frame)) % hop
    x = torch.nn.functional.pad(wave, (0, pad))
    return x.unfold(-1, frame, hop).pow(2).mean(-1).sqrt()


def attack_time_s(samples: torch.Tensor, sample_rate: int = SAMPLE_RATE, frame_ms: float = 4.0,
                  smooth_ms: float = 32.0, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Attack time in seconds per clip; NaN for silent clips.

    ``env`` is the frame RMS (``frame_ms`` frames, hop frame/2) and ``level`` the peak of ``env`` averaged over
    ``smooth_ms`` (so that the beating of a chord's notes — an amplitude modulation at their difference
    frequencies — does not count as the note's level); the attack time runs from ``env``'s first crossing of
    ``low``·level to its first crossing of ``high``·level (linearly interpolated between frames)."""
    frame = max(1, int(round(frame_ms * 1e-3 * sample_rate)))
    hop = max(1, frame // 2)
    env = frame_rms(mono(samples, "onset_sharpness"), frame, hop)
    k = max(1, int(round(smooth_ms * 1e-3 * sample_rate / hop)))
    smooth = torch.nn.functional.avg_pool1d(env[:, None], k, stride=1)[:, 0] if env.shape[-1] >= k else env.mean(-1, keepdim=True)
    level = smooth.max(dim=-1).values
    out = []
    for e, p in zip(env, level):
        if float(p) <= 1e-8:
            out.append(float("nan"))
            continue
        e = (e / p).tolist()

        def crossing(thr):
            for j, v in enumerate(e):
                if v >= thr:
                    return 0.0 if j == 0 else j - 1 + (thr - e[j - 1]) / (v - e[j - 1])
            return float(len(e) - 1)

        out.append((crossing(high) - crossing(low)) * hop / sample_rate)
    return torch.tensor(out, dtype=torch.float32)


class _AudioReward(Reward):
    modality = "audio"

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        if int(sample_rate) <= 0:
            raise ConfigError(f"reward '{self.registry_name}': sample_rate must be a positive integer, got {sample_rate}")
        self.sample_rate = int(sample_rate)


@REWARDS.register("tone_correctness")
class ToneCorrectness(_AudioReward):
    """Are the caption's note(s) the clip's spectral peaks? In [0, 1]; NaN for captions naming no notes."""

    differentiable = True

    def __init__(self, sample_rate: int = SAMPLE_RATE, tolerance_cents: float = 50.0, presence: float = 0.25,
                 f_min: float = 50.0, presence_pool: str = "mean", presence_decades: Optional[float] = None) -> None:
        super().__init__(sample_rate)
        if presence_pool not in ("mean", "min"):
            raise ConfigError(f"tone_correctness: presence_pool is '{presence_pool}'; valid choices: mean, min")
        if presence_decades is not None and not float(presence_decades) > 0:
            raise ConfigError(f"tone_correctness: presence_decades must be > 0 (or null: linear), got {presence_decades}")
        self.presence_pool = presence_pool
        self.presence_decades = None if presence_decades is None else float(presence_decades)
        if not 0 < float(tolerance_cents) <= 600:
            raise ConfigError(f"tone_correctness: tolerance_cents must be in (0, 600], got {tolerance_cents}")
        if not 0 < float(presence) <= 1:
            raise ConfigError(f"tone_correctness: presence must be in (0, 1], got {presence}")
        self.tolerance_cents, self.presence, self.f_min = float(tolerance_cents), float(presence), float(f_min)

    def score(self, samples, prompts, metadata):
        return tone_correctness_score(samples, prompt_notes(prompts, metadata), self.sample_rate, self.tolerance_cents,
                                      self.presence, self.f_min, presence_pool=self.presence_pool,
                                      presence_decades=self.presence_decades)


@REWARDS.register("loudness")
class Loudness(_AudioReward):
    """RMS level in dBFS (higher = louder), or ``−|level − target_db|`` when ``target_db`` is given."""

    differentiable = True
    rate_independent = True  # an RMS level: no sample-rate check against the generator

    def __init__(self, target_db: Optional[float] = None, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate)
        if target_db is not None and not -100.0 <= float(target_db) <= 0.0:
            raise ConfigError(f"loudness: target_db must be in [-100, 0] dBFS, got {target_db}")
        self.target_db = None if target_db is None else float(target_db)

    def score(self, samples, prompts, metadata):
        level = loudness_db(samples)
        return level if self.target_db is None else -(level - self.target_db).abs()


@REWARDS.register("onset_sharpness")
class OnsetSharpness(_AudioReward):
    """``exp(−attack time / tau_ms)`` in (0, 1]; ``articulation_aware`` reads it against staccato / legato prompts."""

    def __init__(self, tau_ms: float = 25.0, frame_ms: float = 4.0, articulation_aware: bool = False,
                 sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate)
        if not float(tau_ms) > 0 or not float(frame_ms) > 0:
            raise ConfigError(f"onset_sharpness: tau_ms and frame_ms must be > 0, got {tau_ms}, {frame_ms}")
        self.tau_ms, self.frame_ms, self.articulation_aware = float(tau_ms), float(frame_ms), bool(articulation_aware)

    def score(self, samples, prompts, metadata):
        t = attack_time_s(samples, self.sample_rate, self.frame_ms)
        s = torch.exp(-t * 1e3 / self.tau_ms)
        s = torch.where(torch.isnan(t), torch.zeros_like(s), s)  # silence: no attack at all
        if not self.articulation_aware:
            return s
        out = []
        for v, p in zip(s.tolist(), prompts):
            art = find_attribute(p, ARTICULATIONS)
            out.append(v if art == "staccato" else 1.0 - v if art == "legato" else math.nan)
        return torch.tensor(out, dtype=torch.float32)


@REWARDS.register("tones_clap_score")
class TonesClapScore(_AudioReward):
    """Cosine between the toy CLAP's caption and clip embeddings, in [-1, 1] (``path``: another clap.safetensors)."""

    def __init__(self, path: Optional[str] = None, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate)
        self.path = path

    def score(self, samples, prompts, metadata):
        from .clap import load_clap

        model = load_clap(self.path, device=self.device)
        a = model.embed_audio(samples.to(self.device), self.sample_rate)
        t = model.embed_text(list(prompts))
        return (a * t).sum(-1).cpu()
