import math

import pytest
import torch

from genalign.errors import ConfigError
from genalign.registry import REWARDS
from genalign.rewards.base import build_reward
from genalign.toy.classifier import DigitClassifier


def test_registered():
    for name in ("digit_correctness", "ink", "centredness", "contrast", "digit_fd", "digit_diversity"):
        assert name in REWARDS.names()


def _img(grey_rows):
    g = torch.tensor(grey_rows, dtype=torch.float32)
    return g[None, None].repeat(1, 3, 1, 1)


def test_ink_hand_computed():
    r = build_reward("ink")
    x = torch.cat([_img([[1.0, 0.0], [0.0, 0.0]]), _img([[0.5, 0.5], [1.0, 0.0]])])
    assert r(x, ["a", "b"]).tolist() == pytest.approx([0.25, 0.5])
    # the grey value is the channel mean
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert r(rgb, ["a"]).item() == pytest.approx(0.5)


def test_centredness_hand_computed():
    r = build_reward("centredness")
    corner2 = _img([[1.0, 0.0], [0.0, 0.0]])  # centroid (-0.5, -0.5): 1 - 0.7071/1.4142 = 0.5
    corner4 = torch.zeros(1, 3, 4, 4)
    corner4[..., 0, 0] = 1.0  # centroid (-0.75, -0.75): 1 - 1.0607/1.4142 = 0.25
    flat = torch.full((1, 3, 4, 4), 0.3)
    blank = torch.zeros(1, 3, 4, 4)
    right = torch.zeros(1, 3, 4, 4)
    right[..., :, 3] = 1.0  # centroid (x=0.75, y=0): 1 - 0.75/1.4142
    out = torch.cat([r(corner2, ["a"]), r(torch.cat([corner4, flat, blank, right]), ["a"] * 4)])
    assert out.tolist() == pytest.approx([0.5, 0.25, 1.0, 1.0, 1 - 0.75 / math.sqrt(2)], abs=1e-5)


def test_contrast_hand_computed():
    r = build_reward("contrast")
    x = torch.cat([_img([[1.0, 0.0], [0.0, 0.0]]), _img([[1.0, 1.0], [0.0, 0.0]]), _img([[0.3, 0.3], [0.3, 0.3]])])
    # mean .25, var (.75^2 + 3 * .25^2) / 4 = .1875 -> .4330; half/half -> .5; flat -> 0
    assert r(x, ["a"] * 3).tolist() == pytest.approx([math.sqrt(0.1875), 0.5, 0.0], abs=1e-5)


def test_measures_are_differentiable():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    for name in ("ink", "centredness", "contrast"):
        r = build_reward(name)
        assert r.differentiable
        (g,) = torch.autograd.grad(r(x, ["a", "b"]).sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.fixture()
def fixed_classifier(tmp_path):
    """A classifier whose logits are 0..9 whatever the image: p(k) = e^k / sum_j e^j."""
    clf = DigitClassifier()
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
        clf.fc2.bias.copy_(torch.arange(10, dtype=torch.float32))
    clf.save(str(tmp_path / "clf"))
    return str(tmp_path / "clf")


def test_digit_correctness_hand_computed(fixed_classifier):
    r = build_reward("digit_correctness", {"classifier_path": fixed_classifier})
    z = sum(math.exp(j) for j in range(10))
    x = torch.rand(4, 3, 16, 16)
    out = r(x, ["a handwritten digit seven", "a handwritten digit zero", "a cat", "whatever"],
            [{}, {}, {}, {"digit": 3}])
    assert out[0].item() == pytest.approx(math.exp(7) / z, rel=1e-5)
    assert out[1].item() == pytest.approx(1 / z, rel=1e-5)
    assert math.isnan(out[2].item())
    assert out[3].item() == pytest.approx(math.exp(3) / z, rel=1e-5)


def test_digit_correctness_shipped_classifier_gradient_and_real_digits():
    from genalign.toy import data as D

    r = build_reward("digit_correctness")
    x, y = D.load_split("heldout")
    x, y = x[:20], y[:20]
    prompts = [D.make_prompt(int(d)) for d in y]
    xr = x.clone().requires_grad_(True)
    s = r(xr, prompts)
    (g,) = torch.autograd.grad(s.sum(), xr)
    assert g.abs().sum() > 0
    assert s.mean() > 0.8  # real digits get their own label
    wrong = r(x, [D.make_prompt((int(d) + 1) % 10) for d in y])
    assert wrong.mean() < 0.2


def test_digit_fd_set_and_leave_one_out(fixed_classifier):
    from genalign.toy import data as D
    from genalign.toy.metrics import fd_to_real

    x, _ = D.load_split("heldout")
    r = build_reward("digit_fd")
    assert r.scope == "set" and not r.differentiable
    # the held-out digits themselves: FD 0
    assert r(x, ["p"] * len(x)).abs().max().item() < 1e-3
    noise = torch.rand(24, 3, 16, 16)
    s = r(noise, ["p"] * 24)
    assert torch.all(s == s[0]) and s[0].item() == pytest.approx(-fd_to_real(noise), rel=1e-4)
    # leave-one-out: score_i = FD(batch without i) - FD(batch), checked against the definition
    from genalign.toy.metrics import digit_features, feature_fd

    mix = torch.cat([x[:23], noise[:1]])
    loo = build_reward("digit_fd", {"mode": "leave_one_out"})(mix, ["p"] * 24)
    real_f = digit_features(x)
    f = digit_features(mix)
    full = feature_fd(f, real_f)
    for i in (0, 23):
        keep = [j for j in range(24) if j != i]
        assert loo[i].item() == pytest.approx(feature_fd(f[keep], real_f) - full, rel=1e-4, abs=1e-4)
    assert loo[23] > 0  # dropping the noise image brings the batch closer to the real digits
    with pytest.raises(ConfigError, match="valid choices"):
        build_reward("digit_fd", {"mode": "bogus"})


def test_digit_diversity_detects_collapse():
    from genalign.toy import data as D

    x, _ = D.load_split("heldout")
    r = build_reward("digit_diversity")
    collapsed = r(x[:1].repeat(16, 1, 1, 1), ["p"] * 16)
    diverse = r(x[:16], ["p"] * 16)
    assert collapsed[0].item() == pytest.approx(1.0, abs=1e-4)
    assert diverse[0].item() > 1.5  # cosine kernel on non-negative (ReLU) features: similarities are high
