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
