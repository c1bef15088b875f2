"""The ``stable_audio3`` family on a tiny random ``StableAudio3Pipeline`` built offline (diffusers' own test
component sizes; a tiny T5Gemma encoder and a character-level Gemma tokenizer).

- the schedule is the stock log-SNR schedule (pinned by hand);
- a deterministic (``kernel: ode``) rollout equals the stock ``__call__`` (Euler, ``stochastic_sampling=False``) on
  the same x_T, with and without CFG, on the latents and the decoded crop; a ``kernel: cps, noise_level: 1`` rollout
  equals the stock ping-pong sampler (``stochastic_sampling=True``) given the same per-sample generators, and its
  step is the ping-pong formula by hand;
- the importance ratio is exactly 1 at the first update (recomputed log-probs, and through the trainer);
- two GRPO iterations change the LoRA parameters; LoRA save/reload (genalign, peft, fused export) reproduces;
- one-line errors for bad durations and sample rates.
"""

from __future__ import annotations

import math

import pytest
import torch

from genalign.config import ModelConfig, SamplerConfig
from genalign.errors import ConfigError
from genalign.registry import MODELS
from genalign.testing.tiny import build_tiny_stable_audio3

from .audio_lora_checks import check_lora_round_trips

PROMPTS = ["a C major chord, bright", "a G note"]
SEEDS = [5, 9]
T = 4


def _cfg(path, rank=4, seconds=1.0, **kw):
    cfg = ModelConfig(family="stable_audio3", path=path, seconds=seconds, **kw)
    cfg.lora.rank, cfg.lora.alpha = rank, 8.0
    return cfg


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_stable_audio3(str(tmp_path_factory.mktemp("tiny_sa3")))


@pytest.fixture(scope="module")
def gen(tiny_path):
    g = MODELS.get("stable_audio3").load(_cfg(tiny_path))
    gen_ = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0: give the adapter weight so parity/adapter tests mean something
        for _, p in g.named_trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen_))
    return g


def test_spec_schedule_and_shapes(gen):
    spec = gen.output_spec()
    assert (spec.modality, spec.seconds, spec.sample_rate, spec.channels) == ("audio", 1.0, 16, 2)
    sch = gen.schedule(T)
    lam = 2.0 - torch.linspace(1, 0, T + 1) * (2.0 - (-6.2))  # log-SNR from -6.2 (t = 1) to 2 (t = 0)
    expect = torch.sigmoid(-lam)[:-1]
    expect[0] = 1.0
    torch.testing.assert_close(sch.sigmas[:-1], expect, rtol=1e-6, atol=0)
    assert float(sch.sigmas[-1]) == 0 and float(sch.sigmas[0]) == 1
    torch.testing.assert_close(sch.timesteps, sch.sigmas[:-1])  # num_train_timesteps 1: the DiT takes σ
    assert gen.latent_shape() == (8, 4)  # 1 s at 16 Hz over downsampling 4
    ro = gen.rollout(PROMPTS, SEEDS, SamplerConfig(num_steps=T, guidance_scale=1.0))  # default kernel: sde
    assert ro.states.shape == (2, T + 1, 8, 4) and ro.samples.shape == (2, 2, 16)
    assert float(ro.samples.abs().max()) <= 1
    assert torch.isfinite(ro.log_probs).all()


def test_ode_rollout_equals_stock_call(gen):
    with torch.no_grad():
        for g in (1.0, 3.0):  # without and with CFG (the stock pipeline's [uncond, cond] batch)
            scfg = SamplerConfig(num_steps=T, guidance_scale=g, kernel="ode")
            ro = gen.rollout(PROMPTS, SEEDS, scfg, stochastic=False)
            assert torch.isnan(ro.log_probs).all()
            stock = gen.stock_call(PROMPTS, SEEDS, T, g).float()
            torch.testing.assert_close(ro.states[:, -1], stock, atol=1e-5, rtol=1e-5)
            assert float((stock - ro.states[:, 0]).abs().max()) > 1e-2
            wav = gen.stock_call(PROMPTS, SEEDS, T, g, output_type="pt").float()
            assert wav.shape == ro.samples.shape == (2, 2, 16)
            torch.testing.assert_close(ro.samples, wav, atol=1e-5, rtol=1e-5)
        # the LoRA matters: the reference network gives another sample
        with gen.reference():
            base = gen.stock_call(PROMPTS, SEEDS, T, 1.0).float()
        assert float((base - gen.stock_call(PROMPTS, SEEDS, T, 1.0).float()).abs().max()) > 1e-3


def test_ping_pong_is_cps_at_noise_level_one(gen):
    scfg = SamplerConfig(num_steps=T, guidance_scale=3.0, kernel="cps", noise_level=1.0)
    with torch.no_grad():
        ro = gen.rollout(PROMPTS, SEEDS, scfg, decode=False)
        stock = gen.stock_call(PROMPTS, SEEDS, T, 3.0, stochastic=True).float()
    torch.testing.assert_close(ro.states[:, -1], stock, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ro.log_probs[:, :-1]).all() and torch.isnan(ro.log_probs[:, -1]).all()  # σ' = 0
    # one step by hand: x̂0 = x − σv, x' = (1−σ')x̂0 + σ'ξ, log N(x'; (1−σ')x̂0, σ'²) averaged over elements
    sch, i = gen.schedule(T), 1
    s, s2 = float(sch.sigmas[i]), float(sch.sigmas[i + 1])
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(1))
    xi = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = gen.predict(gen.denoiser, x, sch.timesteps[i], ro.cond, 3.0)
    st = gen.kernel_step(v, x, i, sch, scfg, True, noise=xi)
    torch.testing.assert_close(st.prev_sample, (1 - s2) * (x - s * v) + s2 * xi, atol=1e-5, rtol=1e-5)
    # CPS' default "simplified" log-prob −mean((x'−μ)²) = −σ'²·mean(ξ²); "gaussian" the true density
    torch.testing.assert_close(st.log_prob, -(s2**2) * (xi**2).mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    gauss = SamplerConfig(num_steps=T, guidance_scale=3.0, kernel="cps", noise_level=1.0, cps_logprob="gaussian")
    st = gen.kernel_step(v, x, i, sch, gauss, True, noise=xi)
    lp = (-0.5 * xi**2 - math.log(s2) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2))
    torch.testing.assert_close(st.log_prob, lp, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["sde", "cps"])
def test_on_policy_ratio_is_one(gen, kernel):
    scfg = SamplerConfig(num_steps=T, guidance_scale=3.0, kernel=kernel, noise_level=0.7)
    ro = gen.rollout(PROMPTS, SEEDS, scfg, decode=False)
    steps = int(torch.isfinite(ro.log_probs[0]).sum())
    assert steps >= T - 1
    for idx in [torch.full((2,), j) for j in range(steps)] + [torch.tensor([0, 2])]:
        with torch.no_grad():
            lp, _, std = gen.step_log_prob(gen.denoiser, ro, idx, scfg)
        ratio = torch.exp(lp - ro.log_probs[torch.arange(2), idx])
        assert torch.all((ratio - 1).abs() <= 1e-5), (idx, ratio)
        assert torch.all(std > 0)


def _probe(g):
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(7))
    t = g.schedule(T).timesteps[1].expand(2)
    return x, t, g.encode(PROMPTS, 1.0)["pos"]


def test_lora_reference_save_reload_and_fused_export(gen, tiny_path, tmp_path):
    from diffusers import StableAudio3Pipeline

    named = gen.named_trainable_parameters()
    assert named and all(".lora_A." in n or ".lora_B." in n for n, _ in named)
    assert {n.split(".lora_")[0].rsplit(".", 2)[-2] for n, _ in named} == {"self_attn", "cross_attn"}
    check_lora_round_trips(gen, "stable_audio3", _cfg, tiny_path, StableAudio3Pipeline, tmp_path, _probe(gen))


def test_bad_durations_and_sample_rates(tiny_path):
    cls = MODELS.get("stable_audio3")
    for bad in (0.0, -1.0, 500.0):
        with pytest.raises(ConfigError, match=r"'model.seconds' is .* durations in \(0, 384\] s") as e:
            cls.load(_cfg(tiny_path, rank=0, seconds=bad))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'model.sample_rate' is 44100 Hz, but this pipeline generates 16 Hz") as e:
        cls.load(_cfg(tiny_path, rank=0, sample_rate=44100))
    assert "\n" not in str(e.value)


def test_grpo_two_iterations_train_the_lora(tiny_path, tmp_path):
    """Two GRPO iterations through the trainer (one optimiser step each, so each unit is computed at θ = θ_old):
    the logged ratio is 1 and nothing is clipped; the LoRA parameters change; the checkpoint holds the adapter."""
    import json

    from genalign.config import build_config
    from genalign.trainer import Trainer

    from tests.core.helpers import tiny_config

    cfg = tiny_config(tiny_path, str(tmp_path / "run"), train__iterations=2, train__save_every=2,
                      train__eval_every=0, train__rollout_batch_size=4, train__train_batch_size=4,
                      algorithm={"name": "grpo", "clip_range": 1e-4, "beta": 0.0},
                      rewards=[{"name": "loudness"}], data__group_size=2)
    cfg["model"] = {"family": "stable_audio3", "path": tiny_path, "seconds": 1.0, "lora": {"rank": 4, "alpha": 8}}
    cfg["sampler"] = {"num_steps": 3, "eval_num_steps": 2, "guidance_scale": 1.0, "kernel": "sde"}
    cfg["task"] = "t2a"
    t = Trainer(build_config(cfg))
    t.setup()
    before = {n: p.detach().clone() for n, p in t.generator.named_trainable_parameters()}
    t.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    rows = [r for r in rows if "ratio" in r]
    assert len(rows) == 2
    assert all(abs(r["ratio"] - 1.0) <= 1e-6 and r["clipfrac"] == 0.0 for r in rows)
    changed = [n for n, p in t.generator.named_trainable_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all(".lora_" in n for n in changed)
    ck = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert (ck / "adapter_model.safetensors").exists() and (ck / "pytorch_lora_weights.safetensors").exists()
