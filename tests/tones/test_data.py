"""The tones generator: determinism, splits, captions <-> labels, and the synthesis matching its labels."""

import pytest
import torch

from genalign.errors import GenalignError
from genalign.tones import data as D


def test_clips_are_deterministic_and_seed_dependent():
    labels = D.sample_labels(6, "train", seed=3)
    assert labels == D.sample_labels(6, "train", seed=3)
    a, b = D.make_clips(labels, seed=7), D.make_clips(labels, seed=7)
    assert a.shape == (6, 1, D.CLIP_LEN) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, D.make_clips(labels, seed=8))
    # clip i depends on (seed, i, label i) only: a prefix of the batch is the same clips
    assert torch.equal(D.make_clips(labels[:2], seed=7), a[:2])
    assert a.abs().max() <= 1.0 and a.abs().max() > 0.25


def test_splits_partition_the_grid_and_keep_every_word_in_train():
    train, held, everything = D.split_labels("train"), D.split_labels("eval"), D.all_labels()
    assert (len(train), len(held), len(everything)) == (360, 72, 432)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(everything)
    assert {(lab.root, lab.kind) for lab in train} == {(r, k) for r in range(12) for k in D.KIND_NAMES}
    assert D.tone_prompts("eval") == [lab.caption for lab in held] and len(set(D.tone_prompts("train"))) == 360
    with pytest.raises(GenalignError, match="valid choices"):
        D.split_labels("test")


def test_captions_without_articulation_have_their_own_disjoint_split():
    train, held = D.tone_prompts("train", articulation=False), D.tone_prompts("eval", articulation=False)
    assert (len(train), len(held), len(set(train) | set(held))) == (180, 36, 216)  # 12 roots x 6 kinds x 3 timbres
    for p in train + held:
        q = D.parse_prompt(p)
        assert q.articulation is None and q.timbre is not None
    with pytest.raises(GenalignError, match="valid choices"):
        D.tone_prompts("test", articulation=False)


def test_captions_and_parsing_round_trip():
    lab = D.ToneLabel(0, "major chord", "bright", "staccato")
    assert lab.caption == "a C major chord, bright, staccato"
    assert lab.midi_notes == (60, 64, 67)
    assert D.ToneLabel(3, "perfect fifth", "sine", "legato").caption == "a perfect fifth on D#, sine, legato"
    for lab in D.all_labels():
        p = D.parse_prompt(lab.caption)
        assert (p.root, p.kind, p.timbre, p.articulation) == (lab.root, lab.kind, lab.timbre, lab.articulation)
    assert D.parse_prompt("a Db note").midi_notes == (61,)
    assert D.parse_prompt("a B flat minor chord").midi_notes == (70, 73, 77)
    assert D.parse_prompt("an A minor chord, hollow").timbre == "hollow"
    for bad in ("a dog barking", "a C note and a D note", "", "a H note", "a C chord"):
        assert D.parse_prompt(bad) is None
    assert D.prompt_notes(["a C note", "noise"], [{}, {"midi_notes": [62, 65]}]) == [(60,), (62, 65)]
    with pytest.raises(GenalignError, match="valid choices"):
        D.ToneLabel(0, "major seventh", "sine", "legato")


def test_spectrum_peaks_are_the_labelled_notes():
    # A sine triad: the three strongest spectral peaks (one per ±1/2 semitone) sit at the labelled frequencies
    lab = D.ToneLabel(2, "minor chord", "sine", "legato")
    x = D.make_clips([lab], seed=0)[0, 0]
    power = torch.fft.rfft(x * torch.hann_window(x.shape[0], periodic=False)).abs() ** 2
    top = sorted(torch.topk(power, 40).indices.tolist())  # 1 Hz bins
    for f in lab.frequencies:
        assert any(abs(b - f) < f * 0.03 for b in top)
    assert all(min(abs(b - f) for f in lab.frequencies) < 0.03 * 700 for b in top)


def test_articulation_envelopes_differ_in_attack_and_length():
    st, lg = D.make_clips([D.ToneLabel(0, "note", "sine", "staccato"), D.ToneLabel(0, "note", "sine", "legato")], 1)[:, 0]
    # energy after 0.4 s: a staccato note has died away, a legato one is still held
    assert st[3200:].pow(2).mean() < 1e-3 * st.pow(2).mean() * 10
    assert lg[3200:].pow(2).mean() > 0.5 * lg.pow(2).mean()
    env = D.envelope("legato", 800, onset=0.01)
    assert env[79] == 0 and env[80] == 0 and abs(float(env[80 + 240]) - 0.5) < 1e-9  # 60 ms attack: 30 ms -> 0.5
