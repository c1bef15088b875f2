"""``clap_score`` on the offline toy encoder: the matching caption scores higher than a mismatched one."""

import pytest
import torch

from genalign.errors import ConfigError
from genalign.registry import REWARDS
from genalign.tones.data import ToneLabel, make_clips


def test_clap_score_prefers_the_matching_caption():
    labels = [ToneLabel(0, "major chord", "bright", "staccato"), ToneLabel(7, "note", "sine", "legato")]
    wav = make_clips(labels, seed=3)
    r = REWARDS.get("clap_score")(encoder="tones")
    right = r(wav, [lab.caption for lab in labels])
    wrong = r(wav, [labels[1].caption, labels[0].caption])
    assert right.shape == (2,) and torch.all(right.abs() <= 1 + 1e-5)
    assert torch.all(right > wrong + 0.1), (right, wrong)


def test_clap_score_needs_a_text_tower():
    with pytest.raises(ConfigError, match="must embed audio and text"):
        REWARDS.get("clap_score")(encoder="digits")


def _tones_cfg(*overrides):
    from genalign.config import load_config

    return load_config("configs/toy/tones_grpo.yaml", list(overrides))


def test_declared_sample_rate_reads_args_encoders_and_defaults():
    from genalign.config_checks import declared_sample_rate

    assert declared_sample_rate(REWARDS.get("tone_correctness"), {}) == 8000  # the constructor default
    assert declared_sample_rate(REWARDS.get("tone_correctness"), {"sample_rate": 16000}) == 16000
    assert declared_sample_rate(REWARDS.get("fd"), {"encoder": "tones"}) == 8000  # the tones encoder's default
    assert declared_sample_rate(REWARDS.get("clap_score"), {"encoder": "clap",
                                                           "encoder_args": {"sample_rate": 44100}}) == 44100
    assert declared_sample_rate(REWARDS.get("fd"), {"encoder": "clip"}) is None  # an image encoder: no rate


def test_reward_sample_rate_mismatch_is_a_one_line_error():
    from genalign.config import validate

    validate(_tones_cfg())  # 8 kHz pipeline, 8 kHz reward: fine
    for override, where in (("rewards=[{name: tone_correctness, args: {sample_rate: 16000}}]", "args.sample_rate: 8000"),
                            ("rewards=[{name: fd, args: {encoder: tones, encoder_args: {sample_rate: 44100}}}]",
                             "args.encoder_args.sample_rate: 8000")):
        with pytest.raises(ConfigError) as e:
            _tones_cfg(override)  # load_config validates
        msg = str(e.value)
        assert "\n" not in msg and "rewards.0" in msg and where in msg, msg
    # the rate comes from the pipeline's VAE config when model.sample_rate is null
    with pytest.raises(ConfigError, match="generates 8000 Hz"):
        _tones_cfg("model.sample_rate=null", "rewards=[{name: onset_sharpness, args: {sample_rate: 44100}}]")
    # loudness (an RMS level) reads the same at any rate: not checked
    _tones_cfg("rewards=[{name: loudness, args: {sample_rate: 44100}}]")
