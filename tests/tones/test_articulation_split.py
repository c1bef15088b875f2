"""scripts/bench/tones_articulation_split.py and genalign.tones.rewards.tone_correctness_factors: the factors multiply
to the reward, and the near-miss share sees a detuned note."""

import importlib.util
import math
import os

import torch

from genalign.registry import REWARDS
from genalign.tones import data as D

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("tones_articulation_split",
                                                  os.path.join(REPO, "scripts/bench/tones_articulation_split.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_factors_multiply_to_the_reward_and_near_miss_sees_a_detuned_note():
    factors = _script().factors
    labels = [D.ToneLabel(r, k, t, a) for r, k, t, a in [(0, "major chord", "bright", "staccato"),
                                                          (4, "minor third", "hollow", "legato"),
                                                          (9, "note", "sine", "staccato")]]
    x = D.make_clips(labels, 7)
    prompts = [lab.caption for lab in labels]
    t = torch.arange(D.CLIP_LEN) / D.SAMPLE_RATE
    a4 = D.midi_to_hz(69)
    # the third prompt asks for A4; a sine a semitone (100 cents) sharp is outside the reward's ±50, inside ±150
    x = torch.cat([x, (0.5 * torch.sin(2 * math.pi * a4 * 2 ** (1 / 12) * t))[None, None]])
    prompts.append(prompts[2])
    f = factors(x, prompts, D.SAMPLE_RATE)
    reward = REWARDS.get("tone_correctness")()(x, prompts)
    assert torch.allclose(f[:, 0] * f[:, 1], reward, atol=1e-5)
    from genalign.tones.rewards import tone_correctness_factors
    assert torch.equal(tone_correctness_factors(x, D.prompt_notes(prompts), near_cents=None), f[:, :2])  # reward's path
    assert (reward[:3] > 0.9).all() and float(f[:3, 2].max()) < 0.05  # real clips: on pitch
    assert float(reward[3]) < 0.05 and float(f[3, 2]) > 0.9            # detuned: all its power is a near miss
