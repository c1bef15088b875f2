"""``model.compile``: the denoiser's repeated blocks compiled in place agree with eager (forward with inductor,
LoRA on and off; gradients through the compiled blocks), and the step kernels stay float32 inside a bf16 autocast
region."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genalign.config import ModelConfig, SamplerConfig
from genalign.errors import ConfigError
from genalign.models.sd3 import SD3Generator
from genalign.models.speed import compile_repeated_blocks


def _gen(path, **kw):
    cfg = ModelConfig(family="sd3", path=path, height=32, width=32, max_sequence_length=8, **kw)
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    torch.manual_seed(0)  # the same LoRA initialisation in every generator
    g = SD3Generator.load(cfg)
    gen_ = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in g.named_trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen_))
    return g


def _inputs(g):
    cond = g.conditioning(["a red cube", "a cat"], 4.5)
    x = torch.randn(2, *g.latent_shape(), generator=torch.Generator().manual_seed(1))
    return x, torch.tensor(500.0), cond


def test_compiled_blocks_agree_with_eager(tiny_sd3):
    torch._dynamo.reset()
    eager, comp = _gen(tiny_sd3), _gen(tiny_sd3, compile=True)
    assert comp.compiled_blocks == 2  # SD3: JointTransformerBlock (from _no_split_modules)
    for (n1, p1), (n2, p2) in zip(eager.named_trainable_parameters(), comp.named_trainable_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    x, t, cond = _inputs(eager)
    with torch.no_grad():
        want = eager.predict(eager.denoiser, x, t, cond, 4.5)
        got = comp.predict(comp.denoiser, x, t, cond, 4.5)
        with eager.reference() as r1, comp.reference() as r2:
            want_ref, got_ref = eager.predict(r1, x, t, cond, 4.5), comp.predict(r2, x, t, cond, 4.5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_ref, want_ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(want, want_ref)  # LoRA on and off really differ


def test_compiled_blocks_give_eager_gradients(tiny_sd3):
    """Backward through compiled blocks (aot_eager: dynamo capture + AOT autograd, without code generation, which
    the forward test above already covers)."""
    torch._dynamo.reset()
    eager, comp = _gen(tiny_sd3), _gen(tiny_sd3, compile=True, compile_backend="aot_eager")
    x, t, cond = _inputs(eager)
    grads = []
    for g in (eager, comp):
        g.denoiser.zero_grad(set_to_none=True)
        g.predict(g.denoiser, x, t, cond, 4.5).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in g.named_trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_compile_needs_repeated_blocks_and_a_known_backend():
    with pytest.raises(ConfigError, match="model.compile"):
        compile_repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="compile_backend.*inductor"):
        compile_repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), backend="nope")


def test_step_kernels_stay_float32_under_bf16_autocast(tiny_sd3):
    g = _gen(tiny_sd3)
    scfg = SamplerConfig(num_steps=3, guidance_scale=4.5, kernel="sde", noise_level=0.7)
    ro = g.rollout(["a red cube", "a cat"], [1, 2], scfg, decode=False)
    sch = ro.schedule
    x, nxt = ro.states[:, 1], ro.states[:, 2]
    out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    want = g.kernel_step(out, x, 1, sch, scfg, True, prev_sample=nxt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = g.kernel_step(out.bfloat16(), x, 1, sch, scfg, True, prev_sample=nxt)
        lp, mu, std = g.step_log_prob(g.denoiser, ro, torch.tensor([1, 1]), scfg)
    for a, b in ((got.log_prob, want.log_prob), (got.mean, want.mean)):
        assert a.dtype == torch.float32
    # the bf16 network output is the only rounding: the kernel's own arithmetic is float32
    want_bf = g.kernel_step(out.bfloat16().float(), x, 1, sch, scfg, True, prev_sample=nxt)
    assert torch.equal(got.log_prob, want_bf.log_prob) and torch.equal(got.mean, want_bf.mean)
    assert lp.dtype == mu.dtype == torch.float32 and torch.isfinite(lp).all()
    assert dataclasses.is_dataclass(scfg)
