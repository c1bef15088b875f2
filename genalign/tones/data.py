"""The ``tones`` toy world's data: procedural, seeded mono clips of notes, intervals and triads + captions.

Choices (fixed; the shipped assets and the tests depend on them):

* **Sample rate / length** — 8 kHz, 1.0 s (8,000 samples, mono, (N, 1, L) in [-1, 1]). The highest fundamental
  is F#5 (740 Hz, a perfect fifth on B4), so 8 kHz (Nyquist 4 kHz) still keeps its first 4 harmonics — enough
  to tell the timbres apart — while a clip is 4× smaller than at 16 kHz (assets stay a few MB; a toy audio
  pipeline's latent stays short). 1 s holds a whole legato note and its release; a 1 s FFT resolves 1 Hz,
  far below the 15.6 Hz semitone step at C4.
* **Pitches** — roots C4..B4 (MIDI 60..71), named with sharps (``C#``; the parser also takes ``Db``,
  ``C sharp``, ``D flat``). Equal temperament, A4 = 440 Hz.
* **Kinds** — ``note``; intervals ``minor third`` (+3), ``major third`` (+4), ``perfect fifth`` (+7) above the
  root; triads ``major chord`` (0, 4, 7) and ``minor chord`` (0, 3, 7).
* **Timbres** — ``sine`` (fundamental only), ``bright`` (all harmonics, amplitude 1/k: saw-like), ``hollow``
  (odd harmonics 1/k: square-like); partials at or above ``BAND_LIMIT`` × sample rate (0.45) are dropped.
* **Articulations** — ``staccato`` (5 ms linear attack, ~0.15 s hold, 40 ms exponential release) and
  ``legato`` (60 ms attack, held to ~0.8 s, 120 ms release).
* **Per-clip variation** (seeded): onset 0–40 ms, detune ±8 cents (whole clip), per-note gains 0.8–1.0,
  random partial phases, hold ±10 %, peak level 0.3–0.7, white noise floor at 1e-3 RMS.
* **Captions** — ``"a C major chord, bright, staccato"``, ``"a perfect fifth on D#, sine, legato"``,
  ``"a G note, hollow, staccato"``: the kind phrase, then timbre, then articulation.
* **Split** — the 432 (root, kind, timbre, articulation) combinations; a combination is held out ("eval")
  when ``(root + kind + timbre + articulation) % 6 == 0`` (indices into the tuples below): 72 eval captions,
  360 train captions, and every (root, kind) pair, timbre and articulation still occurs in train — the eval
  captions test composition, not unseen words.
* **Determinism** — clip i of ``make_clips(labels, seed)`` depends only on ``(seed, i, labels[i])``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import GenalignError, choices

SAMPLE_RATE = 8000
DURATION_S = 1.0
CLIP_LEN = int(SAMPLE_RATE * DURATION_S)
ROOT_MIDI = 60  # C4; roots are MIDI 60..71
BAND_LIMIT = 0.45  # partials at or above BAND_LIMIT * sample rate are dropped
MAX_HARMONIC = 8
N_SPLIT = 6  # a combination is held out when its index sum is divisible by N_SPLIT

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KINDS: Dict[str, Tuple[int, ...]] = {
    "note": (0,),
    "minor third": (0, 3),
    "major third": (0, 4),
    "perfect fifth": (0, 7),
    "major chord": (0, 4, 7),
    "minor chord": (0, 3, 7),
}
KIND_NAMES = tuple(KINDS)
TIMBRES = ("sine", "bright", "hollow")
ARTICULATIONS = ("staccato", "legato")
# (attack s, hold s, release time-constant s) per articulation; hold is jittered ±10 % per clip
ENVELOPES = {"staccato": (0.005, 0.15, 0.040), "legato": (0.060, 0.75, 0.120)}


def midi_to_hz(midi) -> float:
    return 440.0 * 2.0 ** ((float(midi) - 69.0) / 12.0)


@dataclass(frozen=True)
class ToneLabel:
    """One clip's label: root pitch class (0 = C .. 11 = B, in octave 4), kind, timbre, articulation."""

    root: int
    kind: str
    timbre: str
    articulation: str

    def __post_init__(self):
        if not 0 <= int(self.root) < 12:
            raise GenalignError(f"tones: root must be a pitch class 0..11, got {self.root}")
        for what, value, valid in (("kind", self.kind, KIND_NAMES), ("timbre", self.timbre, TIMBRES),
                                   ("articulation", self.articulation, ARTICULATIONS)):
            if value not in valid:
                raise GenalignError(f"tones: unknown {what} '{value}'; valid choices: {choices(valid)}")

    @property
    def midi_notes(self) -> Tuple[int, ...]:
        return tuple(ROOT_MIDI + self.root + s for s in KINDS[self.kind])

    @property
    def frequencies(self) -> Tuple[float, ...]:
        return tuple(midi_to_hz(m) for m in self.midi_notes)

    @property
    def caption(self) -> str:
        return make_caption(self.root, self.kind, self.timbre, self.articulation)

    @property
    def index(self) -> Tuple[int, int, int, int]:
        return (self.root, KIND_NAMES.index(self.kind), TIMBRES.index(self.timbre),
                ARTICULATIONS.index(self.articulation))

    @property
    def split(self) -> str:
        return "eval" if sum(self.index) % N_SPLIT == 0 else "train"


def kind_phrase(root: int, kind: str) -> str:
    name = PITCH_NAMES[int(root)]
    if kind == "note":
        return f"a {name} note"
    if kind.endswith("chord"):
        return f"a {name} {kind}"
    return f"a {kind} on {name}"


def make_caption(root: int, kind: str, timbre: Optional[str] = None, articulation: Optional[str] = None) -> str:
    """``"a C major chord, bright, staccato"``; timbre / articulation are left out when None."""
    parts = [kind_phrase(root, kind)] + [p for p in (timbre, articulation) if p]
    return ", ".join(parts)


def all_labels() -> List[ToneLabel]:
    """The 432 combinations in a fixed order (root, kind, timbre, articulation; last varies fastest)."""
    return [ToneLabel(r, k, t, a) for r in range(12) for k in KIND_NAMES for t in TIMBRES for a in ARTICULATIONS]


def split_labels(split: str) -> List[ToneLabel]:
    """The labels of the ``"train"`` (360) or ``"eval"`` / ``"heldout"`` (72) split, in :func:`all_labels` order."""
    if split in ("heldout", "eval"):
        split = "eval"
    elif split not in ("train", "all"):
        raise GenalignError(f"unknown tones split '{split}'; valid choices: all, eval, heldout, train")
    return [lab for lab in all_labels() if split == "all" or lab.split == split]


def tone_prompts(split: str = "train", articulation: bool = True) -> List[str]:
    """The caption list of a split (full captions, one per combination). ``articulation=False``: captions that
    leave the articulation open ("a C note, bright"), for runs that align what the prompt does not say (DRAGON
    towards the staccato exemplars); their split is by (root, kind, timbre): held out when that index sum is
    divisible by ``N_SPLIT`` (36 held-out, 180 train; disjoint)."""
    if articulation:
        return [lab.caption for lab in split_labels(split)]
    held = split in ("heldout", "eval")
    split_labels(split)  # validates the name
    return [make_caption(lab.root, lab.kind, lab.timbre) for lab in all_labels()
            if lab.articulation == ARTICULATIONS[0] and (sum(lab.index[:3]) % N_SPLIT == 0) == held]


# ---------------------------------------------------------------------------------------------------------
# parsing captions back into labels (for rewards); None / missing fields when a prompt does not say

_PITCH = r"([A-G](?:#|b|\s+sharp|\s+flat)?)"
_NOTE_RE = re.compile(r"\ban?\s+" + _PITCH + r"\s+note\b", re.IGNORECASE)
_CHORD_RE = re.compile(r"\ban?\s+" + _PITCH + r"\s+(major|minor)\s+(?:chord|triad)\b", re.IGNORECASE)
_INTERVAL_RE = re.compile(r"\b(minor third|major third|perfect fifth)\s+(?:on|above|from)\s+" + _PITCH + r"(?![\w#])",
                          re.IGNORECASE)
_WORD_RE = {w: re.compile(r"\b" + w + r"\b", re.IGNORECASE) for w in TIMBRES + ARTICULATIONS}


def parse_pitch(name: str) -> Optional[int]:
    """``"C#"``, ``"Db"``, ``"c sharp"``, ``"D flat"`` -> pitch class 0..11; None if not a pitch name."""
    m = re.fullmatch(r"\s*([A-Ga-g])\s*(#|b|sharp|flat)?\s*", name)
    if not m:
        return None
    pc = PITCH_NAMES.index(m.group(1).upper())
    acc = (m.group(2) or "").lower()
    return (pc + (1 if acc in ("#", "sharp") else -1 if acc in ("b", "flat") else 0)) % 12


@dataclass(frozen=True)
class ParsedPrompt:
    """What a prompt asks for; ``timbre`` / ``articulation`` are None when the prompt does not say."""

    root: int
    kind: str
    timbre: Optional[str] = None
    articulation: Optional[str] = None

    @property
    def midi_notes(self) -> Tuple[int, ...]:
        return tuple(ROOT_MIDI + self.root + s for s in KINDS[self.kind])


def find_attribute(prompt: str, words: Sequence[str]) -> Optional[str]:
    """The one word of ``words`` (timbres or articulations) the prompt contains; None for none or several."""
    found = [w for w in words if _WORD_RE[w].search(prompt)]
    return found[0] if len(found) == 1 else None


def parse_prompt(prompt: str) -> Optional[ParsedPrompt]:
    """The note(s) a caption asks for, or None when it names no note / interval / chord or several of them.

    Timbre and articulation words are read when exactly one of each kind appears (else None)."""
    hits = []
    for m in _NOTE_RE.finditer(prompt):
        hits.append((parse_pitch(m.group(1)), "note"))
    for m in _CHORD_RE.finditer(prompt):
        hits.append((parse_pitch(m.group(1)), m.group(2).lower() + " chord"))
    for m in _INTERVAL_RE.finditer(prompt):
        hits.append((parse_pitch(m.group(2)), " ".join(m.group(1).lower().split())))
    hits = [h for h in hits if h[0] is not None]
    if len(set(hits)) != 1:
        return None
    root, kind = hits[0]
    return ParsedPrompt(root, kind, find_attribute(prompt, TIMBRES), find_attribute(prompt, ARTICULATIONS))


def prompt_notes(prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> List[Optional[Tuple[int, ...]]]:
    """The MIDI notes each prompt asks for; ``metadata[i]["midi_notes"]`` (a list of ints), when present, wins."""
    out: List[Optional[Tuple[int, ...]]] = []
    for i, p in enumerate(prompts):
        md = metadata[i] if metadata is not None and isinstance(metadata[i], dict) else {}
        if md.get("midi_notes") is not None:
            out.append(tuple(int(m) for m in md["midi_notes"]))
            continue
        parsed = parse_prompt(p)
        out.append(parsed.midi_notes if parsed is not None else None)
    return out


# ---------------------------------------------------------------------------------------------------------
# synthesis


def partials(timbre: str, f0: float, sample_rate: int = SAMPLE_RATE) -> List[Tuple[int, float]]:
    """(harmonic number k, relative amplitude) of a timbre, band-limited below BAND_LIMIT * sample_rate."""
    if timbre == "sine":
        ks = [1]
    elif timbre == "bright":
        ks = list(range(1, MAX_HARMONIC + 1))
    elif timbre == "hollow":
        ks = list(range(1, MAX_HARMONIC + 1, 2))
    else:
        raise GenalignError(f"tones: unknown timbre '{timbre}'; valid choices: {choices(TIMBRES)}")
    return [(k, 1.0 / k) for k in ks if k == 1 or k * f0 < BAND_LIMIT * sample_rate]


def envelope(articulation: str, length: int, onset: float, hold_scale: float = 1.0,
             sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Amplitude envelope (L,) float64: 0 before ``onset`` s, linear attack, hold, exponential release."""
    attack, hold, release = ENVELOPES[articulation]
    hold = hold * hold_scale
    t = np.arange(length, dtype=np.float64) / sample_rate - onset
    env = np.clip(t / attack, 0.0, 1.0)
    after = t - (attack + hold)
    env = np.where(after > 0, np.exp(-np.clip(after, 0.0, None) / release), env)
    return torch.from_numpy(np.where(t < 0, 0.0, env))


def synthesize(label: ToneLabel, generator: torch.Generator, length: int = CLIP_LEN,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """One clip (L,) float32 in [-1, 1] drawn with ``generator`` (the per-clip variation in the module doc).

    The signal maths runs in numpy (single-threaded): torch's intra-op threads made these small element-wise
    ops (exp, sin on 8,000 samples) 20× slower on a busy shared CPU."""

    def u(lo, hi, n=1):
        return (lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)).tolist()

    onset, = u(0.0, 0.04)
    detune, = u(-8.0, 8.0)
    hold_scale, = u(0.9, 1.1)
    level, = u(0.3, 0.7)
    gains = u(0.8, 1.0, len(label.midi_notes))
    freqs, amps = [], []
    for midi, g in zip(label.midi_notes, gains):
        f0 = midi_to_hz(midi + detune / 100.0)
        for k, a in partials(label.timbre, f0, sample_rate):
            freqs.append(k * f0)
            amps.append(g * a)
    phases = 2 * math.pi * torch.rand(len(freqs), generator=generator, dtype=torch.float64).numpy()
    t = np.arange(length, dtype=np.float64) / sample_rate
    f = np.asarray(freqs, dtype=np.float64)
    x = (np.asarray(amps)[:, None] * np.sin(2 * math.pi * f[:, None] * t[None] + phases[:, None])).sum(0)
    x = torch.from_numpy(x)
    x = x * envelope(label.articulation, length, onset, hold_scale, sample_rate)
    x = x / x.abs().max().clamp(min=1e-12) * level
    x = x + 1e-3 * torch.randn(length, generator=generator, dtype=torch.float64)
    return x.clamp(-1.0, 1.0).float()


def clip_seed(seed: int, i: int) -> int:
    return (int(seed) * 1_000_003 + int(i)) % (2**63)


def make_clips(labels: Sequence[ToneLabel], seed: int = 0, length: int = CLIP_LEN,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Waveforms (N, 1, L) float32 in [-1, 1]; clip i is seeded by ``(seed, i)`` only."""
    if not labels:
        return torch.zeros(0, 1, length)
    clips = [synthesize(lab, torch.Generator().manual_seed(clip_seed(seed, i)), length, sample_rate)
             for i, lab in enumerate(labels)]
    return torch.stack(clips)[:, None]


def sample_labels(n: int, split: str = "train", seed: int = 0) -> List[ToneLabel]:
    """``n`` labels drawn uniformly (with replacement) from a split's combinations, seeded."""
    pool = split_labels(split)
    idx = torch.randint(len(pool), (int(n),), generator=torch.Generator().manual_seed(int(seed)))
    return [pool[i] for i in idx.tolist()]


def make_dataset(n: int, split: str = "train", seed: int = 0) -> Tuple[torch.Tensor, List[ToneLabel]]:
    """``(waveforms (n, 1, L), labels)``: ``n`` seeded clips of a split's combinations."""
    labels = sample_labels(n, split, seed)
    return make_clips(labels, seed), labels


def write_prompt_files(out_dir: str) -> Dict[str, str]:
    """Write ``train.txt`` and ``eval.txt`` (one caption per line) into ``out_dir``, and the same without the
    articulation (``train_any_articulation.txt``, ``eval_any_articulation.txt``); returns their paths."""
    import os

    from ..io import atomic_write_text

    paths = {}
    for split in ("train", "eval"):
        for name, art in ((split, True), (f"{split}_any_articulation", False)):
            path = os.path.join(out_dir, f"{name}.txt")
            atomic_write_text(path, "\n".join(tone_prompts(split, art)) + "\n")
            paths[name] = path
    return paths
