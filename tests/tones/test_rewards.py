"""The tones signal rewards: correct vs wrong clips, hand-computed values, NaN for unparseable prompts."""

import math

import pytest
import torch

from genalign.errors import ConfigError, RewardError
from genalign.registry import REWARDS
from genalign.rewards.base import build_reward
from genalign.tones import data as D
from genalign.tones import rewards as R

SR = D.SAMPLE_RATE
T = torch.arange(SR) / SR


def sine(f, a=0.5):
    return a * torch.sin(2 * math.pi * f * T)


def test_registered_with_audio_modality():
    for name in ("tone_correctness", "loudness", "onset_sharpness", "tones_clap_score"):
        assert name in REWARDS and REWARDS.get(name).modality == "audio"


def test_correct_chord_beats_wrong_chord_for_every_timbre():
    r = build_reward("tone_correctness")
    prompt = "a C major chord, bright, staccato"
    for timbre in D.TIMBRES:
        good = D.make_clips([D.ToneLabel(0, "major chord", timbre, "staccato")], seed=1)
        bad = D.make_clips([D.ToneLabel(2, "minor chord", timbre, "staccato")], seed=1)
        part = D.make_clips([D.ToneLabel(0, "major third", timbre, "staccato")], seed=1)  # C + E: G missing
        s = r(torch.cat([good, bad, part]), [prompt] * 3)
        assert s.shape == (3,)
        assert s[0] > 0.95 and s[1] < 0.05 and abs(float(s[2]) - 2 / 3) < 0.05, (timbre, s)


def test_presence_pool_min_gives_a_missing_note_no_credit():
    # C + E for "a C major chord": G is absent, so its present_i is 0; "mean" gives 2/3 of explained, "min" 0.
    prompt = "a C major chord, sine, legato"
    good = D.make_clips([D.ToneLabel(0, "major chord", "sine", "legato")], seed=1)
    part = D.make_clips([D.ToneLabel(0, "major third", "sine", "legato")], seed=1)
    x = torch.cat([good, part])
    mean, strict = R.ToneCorrectness()(x, [prompt] * 2), R.ToneCorrectness(presence_pool="min")(x, [prompt] * 2)
    assert float(strict[0]) == pytest.approx(float(mean[0]), abs=1e-6) and strict[0] > 0.95  # every note present
    assert abs(float(mean[1]) - 2 / 3) < 0.05 and float(strict[1]) < 0.02
    # one note: the pools agree (a single present_i)
    note = D.make_clips([D.ToneLabel(0, "note", "sine", "legato")], seed=1)
    assert float(R.ToneCorrectness(presence_pool="min")(note, ["a C note"])) == pytest.approx(
        float(R.ToneCorrectness()(note, ["a C note"])), abs=1e-6)
    with pytest.raises(ConfigError, match="presence_pool.*valid choices: mean, min"):
        build_reward("tone_correctness", {"presence_pool": "max"})


def test_presence_options_hand_computed():
    # C4 at 0.5 and E4 at 0.05 for "a major third on C": all power at expected notes (explained = 1); E's share of
    # the power is 0.0025 / 0.2525, its ratio to the required presence · 1/K = 0.25 / 2 is r = 0.0792.
    x = (sine(D.midi_to_hz(60), 0.5) + sine(D.midi_to_hz(64), 0.05))[None, None]
    r = (0.0025 / 0.2525) / (0.25 / 2)
    log_r = 1 + math.log10(r) / 2  # presence_decades 2: a ratio of 1/100 (two decades short) scores 0
    expected = {(): (1 + r) / 2, (("presence_decades", 2.0),): (1 + log_r) / 2, (("presence_pool", "min"),): r,
                (("presence_pool", "min"), ("presence_decades", 2.0)): log_r}
    for kw, want in expected.items():
        assert float(R.ToneCorrectness(**dict(kw))(x, ["a major third on C"])) == pytest.approx(want, abs=1e-3), kw
    assert float(R.ToneCorrectness(presence_decades=2.0)(sine(D.midi_to_hz(60))[None, None], ["a major third on C"])
                 ) == pytest.approx(0.5, abs=1e-3)  # E absent (r ≈ 0): clamped at 0, not −inf
    with pytest.raises(ConfigError, match="presence_decades must be > 0"):
        build_reward("tone_correctness", {"presence_decades": 0})


def test_every_generated_clip_scores_high_on_its_own_caption():
    x, labels = D.make_dataset(48, "all", seed=11)
    s = R.ToneCorrectness()(x, [lab.caption for lab in labels])
    assert s.min() > 0.95


def test_hand_computed_two_sines():
    # C4 at amplitude a and F#4 (a tritone away, outside every C4 harmonic band) at amplitude b; prompt "a C note":
    # explained = a²/(a²+b²); present = min(1, explained / presence); score = explained * present
    c4, fs4 = D.midi_to_hz(60), D.midi_to_hz(66)
    x = (sine(c4, 0.4) + sine(fs4, 0.6))[None, None]
    e = 0.16 / (0.16 + 0.36)
    s = R.ToneCorrectness(presence=0.5)(x, ["a C note"])
    assert float(s) == pytest.approx(e * min(1.0, e / 0.5), abs=2e-3)
    # an octave too high: all power at a C4 harmonic, none at the fundamental
    assert float(R.ToneCorrectness()(sine(2 * c4)[None, None], ["a C note"])) < 1e-3
    assert float(R.ToneCorrectness()(torch.zeros(1, 1, SR), ["a C note"])) == 0.0


def test_unparseable_prompts_are_nan_and_metadata_wins():
    x = D.make_clips([D.ToneLabel(0, "note", "sine", "legato")] * 3, seed=0)
    s = R.ToneCorrectness()(x, ["a C note", "a dog barking", "a C note and a D note"])
    assert s[0] > 0.9 and torch.isnan(s[1:]).all()
    s = R.ToneCorrectness()(x[:1], ["whatever"], [{"midi_notes": [60]}])
    assert s[0] > 0.9


def test_tone_correctness_is_differentiable():
    x = D.make_clips([D.ToneLabel(0, "major chord", "sine", "legato")], seed=0).requires_grad_(True)
    r = build_reward("tone_correctness")
    assert r.differentiable
    r(x, ["a D minor chord"]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_loudness_hand_values():
    x = torch.stack([sine(440.0, 1.0), sine(440.0, 0.1), torch.zeros(SR)])[:, None]
    s = build_reward("loudness")(x, ["", "", ""])
    assert s.tolist() == pytest.approx([-10 * math.log10(2), -20 - 10 * math.log10(2), -100.0], abs=1e-3)
    s = build_reward("loudness", {"target_db": -20})(x[:2], ["", ""])
    assert s.tolist() == pytest.approx([-(20 - 3.0103), -3.0103], abs=1e-3)
    with pytest.raises(ConfigError, match="target_db"):
        build_reward("loudness", {"target_db": 6})


def test_onset_sharpness_ramp_and_articulations():
    # a 50 ms linear ramp to a held tone: 10 %→90 % takes 40 ms (± one 2 ms hop of the 4 ms frame RMS)
    ramp = (T / 0.05).clamp(max=1.0)
    t = R.attack_time_s((ramp * sine(1000.0, 1.0))[None, None])
    assert float(t) == pytest.approx(0.040, abs=0.003)
    x, labels = D.make_dataset(40, "all", seed=5)
    s = R.OnsetSharpness()(x, [lab.caption for lab in labels])
    st = torch.tensor([lab.articulation == "staccato" for lab in labels])
    assert s[st].min() > s[~st].max()  # every staccato clip's attack is sharper than every legato one's
    aware = R.OnsetSharpness(articulation_aware=True)
    prompts = ["a C note, staccato", "a C note, legato", "a C note"]
    clip = D.make_clips([D.ToneLabel(0, "note", "sine", "staccato")], seed=0).repeat(3, 1, 1)
    v = aware(clip, prompts)
    assert v[0] > 0.5 and v[1] == pytest.approx(1 - float(v[0]), abs=1e-6) and math.isnan(v[2])


def test_shape_errors():
    with pytest.raises(RewardError, match=r"\(N, C, L\)"):
        R.ToneCorrectness()(torch.zeros(2, SR), ["a C note"] * 2)
