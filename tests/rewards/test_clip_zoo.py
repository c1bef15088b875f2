"""clip_score, pickscore, aesthetic on a tiny CLIP trained in the session fixture (see conftest.py)."""

import pytest
import torch
from safetensors.torch import save_file

from genalign.errors import CheckpointError
from genalign.rewards.base import build_reward
from reward_fixtures import COLORS, caption, color_images

NAMES = list(COLORS)


def _matrix(reward, imgs):
    """scores[i, j] = reward(image i, caption j)."""
    return torch.stack([reward(imgs, [caption(n)] * len(NAMES)) for n in NAMES], dim=1)


@pytest.mark.parametrize("name", ["clip_score", "pickscore"])
def test_matching_captions_score_higher(name, tiny_clip_dir):
    args = {"model": tiny_clip_dir} if name == "clip_score" else {"model": tiny_clip_dir, "processor": tiny_clip_dir}
    r = build_reward(name, args)
    imgs = color_images(NAMES, seed=1234).requires_grad_(True)  # fresh noise, not seen in training
    m = _matrix(r, imgs)
    m.trace().backward()
    assert imgs.grad.abs().sum() > 0
    m, imgs = m.detach(), imgs.detach()
    assert m.shape == (3, 3) and torch.isfinite(m).all()
    for i in range(3):
        assert m[i, i] == m[i].max(), m
    if name == "clip_score":
        assert (m.abs() <= 1 + 1e-5).all()
    else:  # logit_scale.exp() * cos: the same ranking as cos, scaled by the trained temperature
        from transformers import CLIPModel

        scale = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp().item()
        c = _matrix(build_reward("clip_score", {"model": tiny_clip_dir}), imgs)
        assert torch.allclose(m, scale * c, atol=1e-4)


def test_clip_score_gradient_reaches_pixels_and_any_size(tiny_clip_dir):
    r = build_reward("clip_score", {"model": tiny_clip_dir, "scale": 2.5, "clamp_min": 0.0})
    x = color_images(["red", "green"], size=48).requires_grad_(True)  # resized + cropped in torch
    s = r(x, [caption("red"), caption("green")])
    assert s.shape == (2,) and (s >= 0).all()
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("where", ["local", "hub"])
def test_missing_model_is_a_checkpoint_error(tmp_path, where):
    model = str(tmp_path / "nope") if where == "local" else "genalign-tests/no-such-clip"  # offline: not in cache
    r = build_reward("clip_score", {"model": model})
    with pytest.raises(CheckpointError, match="cannot load CLIP model"):
        r(torch.rand(1, 3, 32, 32), ["x"])


def test_aesthetic_linear_head_hand_computed(tiny_clip_dir, tmp_path):
    from genalign.rewards.clip import HFClip

    clip = HFClip(tiny_clip_dir).load()
    imgs = color_images(NAMES, seed=7)
    with torch.no_grad():
        e = clip.image_embeds(imgs)  # (3, 16) L2-normalised
    target = e[0]
    # head = layers.0 (16->8) ... layers.7 (4->1); dropout-only => affine. Build it so that head(v) = target·v + 0.5
    torch.manual_seed(0)
    sd = {}
    dims = [16, 8, 6, 5, 4, 1]
    for (k, (i, o)) in zip([0, 2, 4, 6, 7], zip(dims[:-1], dims[1:])):
        sd[f"layers.{k}.weight"] = torch.zeros(o, i)
        sd[f"layers.{k}.bias"] = torch.zeros(o)
    sd["layers.0.weight"][0] = target
    for k, o in zip([2, 4, 6], [6, 5, 4]):
        sd[f"layers.{k}.weight"][0, 0] = 1.0
    sd["layers.7.weight"][0, 0] = 1.0
    sd["layers.7.bias"][0] = 0.5
    head = tmp_path / "head.safetensors"
    save_file(sd, str(head))
    r = build_reward("aesthetic", {"model": tiny_clip_dir, "head": str(head)})
    x = imgs.clone().requires_grad_(True)
    s = r(x, [""] * 3)
    assert torch.allclose(s, e @ target + 0.5, atol=1e-5)
    assert s[0] == s.max() and s[0].item() == pytest.approx(1.5, abs=1e-5)  # own embedding: cos = 1
    s.sum().backward()
    assert x.grad.abs().sum() > 0
    # the same head as a .pth read with weights_only
    pth = tmp_path / "head.pth"
    torch.save(sd, str(pth))
    s2 = build_reward("aesthetic", {"model": tiny_clip_dir, "head": str(pth)})(imgs, [""] * 3)
    assert torch.allclose(s2, s.detach(), atol=1e-6)


def test_aesthetic_bad_head_file(tiny_clip_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    r = build_reward("aesthetic", {"model": tiny_clip_dir, "head": str(bad)})
    with pytest.raises(CheckpointError, match="cannot read weights"):
        r(torch.rand(1, 3, 32, 32), [""])
    save_file({"layers.0.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(CheckpointError, match="missing key"):
        build_reward("aesthetic", {"model": tiny_clip_dir, "head": str(bad)})(torch.rand(1, 3, 32, 32), [""])
