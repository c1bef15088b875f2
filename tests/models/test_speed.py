"""No repeated work, same numbers: the batch conditioning encodes each unique prompt once and the negative prompt
once per run (and equals the plain per-sample encode), and the reference policy's direct adapter toggle gives
exactly diffusers' disable_adapters()/enable_adapters() outputs without touching requires_grad."""

from __future__ import annotations

import pytest
import torch

from genalign.config import ModelConfig, SamplerConfig
from genalign.registry import MODELS
from genalign.testing import tiny

BUILDERS = {"sd3": tiny.build_tiny_sd3, "flux": tiny.build_tiny_flux, "sd": tiny.build_tiny_sd15,
            "sdxl": tiny.build_tiny_sdxl}
GUIDANCE = {"sd3": 4.5, "flux": 3.5, "sd": 5.0, "sdxl": 5.0}
BATCH = ["a red car", "a cat", "a red car", "a red car", "a cat"]


@pytest.fixture(scope="module", params=list(BUILDERS))
def gen(request, tmp_path_factory):
    name = request.param
    path = BUILDERS[name](str(tmp_path_factory.mktemp(name)))
    cfg = ModelConfig(family=name, path=path, height=32, width=32, max_sequence_length=16 if name == "flux" else None)
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    g = MODELS.get(name).load(cfg)
    gen_ = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in g.named_trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen_))
    return g


def _flat(cond, prefix=""):
    out = {}
    for k, v in cond.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif torch.is_tensor(v):
            out[prefix + k] = v
    return out


def test_conditioning_equals_encode_and_encodes_each_prompt_once(gen, monkeypatch):
    g = GUIDANCE[gen.family]
    want = _flat(gen.encode(BATCH, g))
    calls = []
    inner = gen.pipe.encode_prompt

    def counting(*a, **kw):
        prompt = kw.get("prompt", a[0] if a else None)
        calls.append((list(prompt), bool(kw.get("do_classifier_free_guidance", a[3] if len(a) > 3 else False))))
        return inner(*a, **kw)

    monkeypatch.setattr(gen.pipe, "encode_prompt", counting)
    gen.__dict__.pop("_negative_cache", None)
    got = _flat(gen.conditioning(BATCH, g))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    # the two unique prompts once, without their negatives; the negative once (with a one-prompt batch)
    assert ["a red car", "a cat"] in [c[0] for c in calls] and all(len(c[0]) <= 2 for c in calls)
    first = len(calls)
    assert first == (2 if gen.uses_cfg(g) else 1)
    gen.conditioning(["a cat"] * 3, g)
    assert len(calls) == first + 1  # the negative comes from the cache now
    assert calls[-1] == (["a cat"], False)


def test_switching_the_encode_cache_off_gives_the_same_rollout(gen, monkeypatch):
    scfg = SamplerConfig(num_steps=2, guidance_scale=GUIDANCE[gen.family],
                         kernel="ddim" if gen.family in ("sd", "sdxl") else "sde")
    a = gen.rollout(BATCH[:3], [1, 2, 3], scfg, decode=False)
    monkeypatch.setenv("GENALIGN_SPEED_OFF", "encode_cache")
    b = gen.rollout(BATCH[:3], [1, 2, 3], scfg, decode=False)
    # equal up to float32 rounding: GEMMs of a different batch size (2 unique prompts vs 3) may round differently
    torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=1e-4, atol=2e-5, equal_nan=True)


def test_direct_adapter_toggle_matches_diffusers(gen, monkeypatch):
    scfg = SamplerConfig(num_steps=2, guidance_scale=GUIDANCE[gen.family],
                         kernel="ddim" if gen.family in ("sd", "sdxl") else "sde")
    ro = gen.rollout(BATCH[:2], [4, 5], scfg, decode=False)
    x, t = ro.states[:, 1], ro.schedule.timesteps[1]
    net = gen.denoiser
    grads = [p.requires_grad for p in net.parameters()]
    with torch.no_grad():
        lora = gen.predict(net, x, t, ro.cond, ro.guidance_scale)
        with gen.reference() as ref:
            fast = gen.predict(ref, x, t, ro.cond, ro.guidance_scale)
            assert [p.requires_grad for p in net.parameters()] == grads  # only the flag moved
        after = gen.predict(net, x, t, ro.cond, ro.guidance_scale)
        monkeypatch.setenv("GENALIGN_SPEED_OFF", "adapter_toggle")
        with gen.reference() as ref:
            slow = gen.predict(ref, x, t, ro.cond, ro.guidance_scale)
        net.disable_adapters()
        base = gen.predict(net, x, t, ro.cond, ro.guidance_scale)
        net.enable_adapters()
    assert torch.equal(fast, slow) and torch.equal(fast, base)
    assert torch.equal(after, lora) and not torch.allclose(fast, lora)
    assert [p.requires_grad for p in net.parameters()] == grads
