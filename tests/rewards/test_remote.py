"""The reward server (a real subprocess on loopback) and the `remote` client reward."""

import base64
import json
import urllib.request

import pytest
import torch

from genalign.errors import GenalignError
from genalign.rewards.base import build_reward
from genalign.rewards.encoders import encode_png

from remote_helpers import Server, post


@pytest.fixture(scope="module")
def server():
    s = Server("remote_helpers:HelperReward", "--max-request-bytes", "20000", "--request-timeout", "60")
    yield s
    s.stop()


def b64png(img):
    return base64.b64encode(encode_png(img)).decode()


def test_health_and_remote_scores_match_local(server):
    with urllib.request.urlopen(server.url + "/health", timeout=30) as r:
        h = json.loads(r.read())
    assert h["status"] == "ok" and h["reward"] == "remote_helpers:HelperReward" and h["max_request_bytes"] == 20000
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    remote = build_reward("remote", {"url": server.url, "timeout": 60})
    s = remote(x, ["a", "skip", "b"])
    expect = ((x * 255).round() / 255).mean(dim=(1, 2, 3))  # PNG carries 8-bit values
    assert torch.isnan(s[1])
    assert torch.allclose(s[[0, 2]], expect[[0, 2]], atol=1e-6)


def test_bad_requests_get_json_errors_and_server_keeps_serving(server):
    img = b64png(torch.rand(3, 8, 8))
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps([1, 2]).encode(), 400, "JSON object"),
        (json.dumps({"prompts": ["a"], "images": ["%%%"]}).encode(), 400, "not valid base64"),
        (json.dumps({"prompts": ["a"], "images": [base64.b64encode(b"hello").decode()]}).encode(), 400,
         "not a readable image"),
        (json.dumps({"prompts": ["a", "b"], "images": [img]}).encode(), 400, "1 images but 2 prompts"),
        (json.dumps({"prompts": ["a", "b"], "images": [img, b64png(torch.rand(3, 4, 4))]}).encode(), 400,
         "same shape"),
        (json.dumps({"prompts": ["a"], "audio": [img]}).encode(), 400, "scores image"),
        (json.dumps({"prompts": ["a"], "images": [img], "metadata": "x"}).encode(), 400, "'metadata'"),
        (json.dumps({"prompts": ["a"], "images": ["A" * 30000]}).encode(), 413, "exceeds the limit"),
    ]
    for body, status, msg in cases:
        code, out = post(server.url, body)
        assert code == status and msg in out["error"], (code, out)
    code, out = post(server.url, b"{}", path="/nope")
    assert code == 404 and "valid" in out["error"]
    code, out = post(server.url, json.dumps({"prompts": ["a"], "images": [img]}).encode())
    assert code == 200 and len(out["scores"]) == 1
    with pytest.raises(GenalignError, match=r"rejected the request \(HTTP 413\)"):
        build_reward("remote", {"url": server.url})(torch.rand(4, 3, 64, 64), ["a"] * 4)


def test_audio_round_trip():
    s = Server("remote_helpers:AudioPeak")
    try:
        t = torch.arange(400) / 8000.0
        wav = torch.stack([0.25 * torch.sin(2 * torch.pi * 440 * t)[None], 0.75 * torch.sin(2 * torch.pi * 220 * t)[None]])
        r = build_reward("remote", {"url": s.url, "modality": "audio", "sample_rate": 8000, "timeout": 60})
        out = r(wav, ["x", "y"])
        assert torch.allclose(out, wav.abs().amax(dim=(1, 2)), atol=1e-4)
    finally:
        s.stop()


def test_slow_scoring_times_out_and_dead_server_raises():
    s = Server("remote_helpers:HelperReward", "--arg", "sleep=5", "--request-timeout", "0.5")
    try:
        r = build_reward("remote", {"url": s.url, "timeout": 20, "retries": 1, "backoff": 0.1})
        with pytest.raises(GenalignError, match="took longer than 0.5 s"):
            r(torch.rand(1, 3, 4, 4), ["a"])
        with urllib.request.urlopen(s.url + "/health", timeout=30) as resp:  # still alive while scoring runs
            assert json.loads(resp.read())["status"] == "ok"
    finally:
        s.stop()
    r = build_reward("remote", {"url": s.url, "timeout": 3, "retries": 3, "backoff": 0.1})
    with pytest.raises(GenalignError, match=r"unreachable after 4 attempt\(s\).*serve-reward"):
        r(torch.rand(1, 3, 4, 4), ["a"])


def test_serve_main_rejects_bad_args():
    from genalign.errors import ConfigError
    from genalign.rewards.remote import serve_main

    with pytest.raises(ConfigError, match="key=value"):
        serve_main(["brightness", "--arg", "novalue"])
    with pytest.raises(ConfigError, match="valid choices"):
        serve_main(["no_such_reward", "--port", "0"])
