import io

import pytest
import torch
from PIL import Image

from genalign.errors import ConfigError
from genalign.rewards.base import build_reward


def test_brightness_hand_values_and_gradient():
    x = torch.zeros(2, 3, 2, 2)
    x[0] = 0.5
    x[1, 0] = 1.0  # red channel full, others 0 -> mean 1/3
    x.requires_grad_(True)
    r = build_reward("brightness")
    s = r(x, ["a", "b"])
    assert torch.allclose(s, torch.tensor([0.5, 1 / 3]))
    s.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / 12))


def test_target_color_hand_values():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0] = 1.0  # pure red
    x[1, 1] = 1.0  # pure green
    r = build_reward("target_color", {"rgb": [1.0, 0.0, 0.0]})
    s = r(x, ["", ""])
    assert s[0].item() == pytest.approx(0.0, abs=1e-7)
    assert s[1].item() == pytest.approx(-(2 ** 0.5))
    assert r.differentiable
    with pytest.raises(ConfigError):
        build_reward("target_color", {"rgb": [2.0, 0, 0]})


def test_jpeg_compressibility_matches_pil_and_prefers_flat_images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 32, 32), 0.5)
    noise = torch.rand(3, 32, 32, generator=g)
    x = torch.stack([flat, noise])
    s = build_reward("jpeg_compressibility")(x, ["", ""])
    arr = (noise * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    assert s[1].item() == pytest.approx(-buf.tell() / 1000.0)
    assert s[0] > s[1]
    s2 = build_reward("jpeg_incompressibility")(x, ["", ""])
    assert torch.allclose(s2, -s)


def test_unknown_reward_and_bad_args():
    with pytest.raises(ConfigError, match="valid choices"):
        build_reward("no_such_reward")
    with pytest.raises(ConfigError, match="valid keys"):
        build_reward("brightness", {"oops": 1})
