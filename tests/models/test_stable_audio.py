"""The ``stable_audio`` family on diffusers' own tiny Stable Audio components (offline T5; METHODS §14).

- parity: a rollout at η = 1 with order 1 is the stock ``__call__`` with ``solver_order=1`` given the same step
  noise (the stock sampler is always stochastic, so the closest exact statement to "deterministic rollout equals
  stock" is this one with the noise replayed), on the latents and on the decoded waveform crop;
- the η = 0 (deterministic) step and the η = 1 step pinned against hand-computed VE-DDIM formulas;
- on-policy ratio exactly 1 (recomputed log-probs), the GRPO loss' first-update ratio;
- LoRA: PEFT-format save, reload into a fresh generator, fused export loaded by ``from_pretrained``;
- one-line errors for bad durations and sample rates.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from genalign.config import ModelConfig, SamplerConfig
from genalign.errors import ConfigError
from genalign.registry import MODELS
from genalign.testing.tiny import build_tiny_stable_audio

from .audio_lora_checks import check_lora_round_trips

PROMPTS = ["a C major chord, bright", "a G note, sine, legato"]
SEEDS = [5, 9]
T = 4


def _cfg(path, rank=4, **kw):
    cfg = ModelConfig(family="stable_audio", path=path, **kw)
    cfg.lora.rank, cfg.lora.alpha = rank, 8.0
    return cfg


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_stable_audio(str(tmp_path_factory.mktemp("tiny_sa")))


@pytest.fixture(scope="module")
def gen(tiny_path):
    g = MODELS.get("stable_audio").load(_cfg(tiny_path))
    gen_ = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0: give the adapter weight so adapter tests mean something
        for _, p in g.named_trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen_))
    return g


def _scfg(eta=1.0, g=3.0):
    return SamplerConfig(num_steps=T, guidance_scale=g, kernel="ddim", eta=eta)


def test_spec_schedule_and_shapes(gen):
    spec = gen.output_spec()
    assert (spec.modality, spec.seconds, spec.sample_rate, spec.channels) == ("audio", 2.0, 4, 2)
    sch = gen.schedule(T)
    expect = torch.exp(torch.linspace(math.log(500), math.log(0.3), T))
    torch.testing.assert_close(sch.sigmas[:-1], expect, rtol=1e-5, atol=0)
    assert float(sch.sigmas[-1]) == 0
    torch.testing.assert_close(sch.timesteps, torch.atan(expect) * 2 / math.pi, rtol=1e-6, atol=0)
    ro = gen.rollout(PROMPTS, SEEDS, _scfg())
    assert ro.states.shape == (2, T + 1, 3, 4) and ro.samples.shape == (2, 2, 8)
    assert float(ro.samples.abs().max()) <= 1
    # the first T-1 steps are stochastic, the last (σ' = 0) deterministic
    assert torch.isfinite(ro.log_probs[:, :-1]).all() and torch.isnan(ro.log_probs[:, -1]).all()
    # x_T = z·√(σ_max²+1), the stock init_noise_sigma
    assert float(ro.states[:, 0].std()) == pytest.approx(math.sqrt(500**2 + 1), rel=0.5)


def test_rollout_equals_stock_call_with_replayed_noise(gen):
    with torch.no_grad():
        for g in (1.0, 3.0):  # without and with CFG
            ro = gen.rollout(PROMPTS, SEEDS, _scfg(g=g), decode=False)
            stock = gen.stock_call(PROMPTS, SEEDS, T, g).float()
            torch.testing.assert_close(ro.states[:, -1], stock, atol=1e-4, rtol=1e-4)
            assert float(stock.std()) > 1e-2
        wav = gen.stock_call(PROMPTS, SEEDS, T, 3.0, output_type="pt").float()
        ro = gen.rollout(PROMPTS, SEEDS, _scfg(g=3.0))
    n = wav.shape[-1]  # the stock crop [0, seconds·sr) (this toy decoder returns 7 of the 8 samples; we zero-pad)
    assert wav.shape[:2] == ro.samples.shape[:2] and n >= ro.samples.shape[-1] - 1
    torch.testing.assert_close(ro.samples[..., :n], wav.clamp(-1, 1), atol=1e-4, rtol=1e-4)
    assert n == 7 and float(ro.samples[..., n:].abs().sum()) == 0


def test_kernel_steps_by_hand(gen):
    """η = 1: x' = (σ'/σ)²x + (1−(σ'/σ)²)x̂0 + σ'√(1−(σ'/σ)²)ξ (the stock first-order step); η = 0: x̂0 + (σ'/σ)(x−x̂0)."""
    sch = gen.schedule(T)
    cond = gen.encode(PROMPTS, 3.0)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)) * 20
    xi = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    i = 1
    s, s2 = float(sch.sigmas[i]), float(sch.sigmas[i + 1])
    with torch.no_grad():
        out = gen.predict(gen.denoiser, x, sch.timesteps[i], cond, 3.0)
    x0 = x / (1 + s**2) - s / math.sqrt(1 + s**2) * out  # c_skip x + c_out F (σ_d = 1)
    r = s2 / s
    st1 = gen.kernel_step(out, x, i, sch, _scfg(1.0), True, noise=xi)
    torch.testing.assert_close(st1.prev_sample, r**2 * x + (1 - r**2) * x0 + s2 * math.sqrt(1 - r**2) * xi,
                               atol=1e-4, rtol=1e-5)
    st0 = gen.kernel_step(out, x, i, sch, _scfg(1.0), False)
    torch.testing.assert_close(st0.prev_sample, x0 + r * (x - x0), atol=1e-4, rtol=1e-5)
    # the log-prob is the Gaussian density of ξ with std ρ = σ'√(1−r²), mean over elements
    rho = s2 * math.sqrt(1 - r**2)
    lp = (-0.5 * xi**2 - math.log(rho) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2))
    torch.testing.assert_close(st1.log_prob, lp, atol=1e-4, rtol=1e-5)


def test_on_policy_ratio_is_one(gen):
    scfg = _scfg()
    ro = gen.rollout(PROMPTS, SEEDS, scfg, decode=False)
    for idx in [torch.full((2,), j) for j in range(T - 1)] + [torch.tensor([0, 2])]:
        with torch.no_grad():
            lp, _, std = gen.step_log_prob(gen.denoiser, ro, idx, scfg)
        ratio = torch.exp(lp - ro.log_probs[torch.arange(2), idx])
        assert torch.all((ratio - 1).abs() <= 1e-5), (idx, ratio)
        assert torch.all(std > 0)


def _probe(g):
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7)) * 3
    t = g.schedule(T).timesteps[1].expand(2)
    return x, t, g.encode(PROMPTS, 1.0)["pos"]


def test_lora_reference_save_reload_and_fused_export(gen, tiny_path, tmp_path):
    from diffusers import StableAudioPipeline

    from genalign.export import export

    named = gen.named_trainable_parameters()
    assert named and all(".lora_A." in n or ".lora_B." in n for n, _ in named)
    assert {n.split(".lora_")[0].split(".")[-2] for n, _ in named} >= {"attn1", "attn2"}
    ckpt, _ = check_lora_round_trips(gen, "stable_audio", _cfg, tiny_path, StableAudioPipeline, tmp_path,
                                     _probe(gen))
    lora_out = export(str(ckpt), str(tmp_path / "lora_only"))  # un-fused: the adapter files
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(lora_out))


def test_bad_durations_and_sample_rates(tiny_path):
    cls = MODELS.get("stable_audio")
    for bad in (0.0, -1.0, 2.5):
        with pytest.raises(ConfigError, match=r"'model.seconds' is .* durations in \(0, 2\] s") as e:
            cls.load(_cfg(tiny_path, rank=0, seconds=bad))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'model.sample_rate' is 44100 Hz, but this pipeline generates 4 Hz") as e:
        cls.load(_cfg(tiny_path, rank=0, sample_rate=44100))
    assert "\n" not in str(e.value)
    g = cls.load(_cfg(tiny_path, rank=0, seconds=1.0, sample_rate=4))
    assert g.output_spec().seconds == 1.0
    ro = g.rollout(PROMPTS[:1], [0], _scfg(), num_steps=2)
    assert ro.samples.shape == (1, 2, 4)  # 1 s at 4 Hz: the crop only
    with pytest.raises(ConfigError, match="sampler.shift"):
        g.schedule(4, shift=3.0)


def test_grpo_through_the_trainer_first_update_ratio_is_one(tiny_path, tmp_path):
    """One GRPO iteration (one optimiser step, so every unit is computed at θ = θ_old): the logged mean ratio is 1
    and nothing is clipped; the LoRA trains and the checkpoint holds the PEFT adapter; the evaluation writes WAVs."""
    import json

    from genalign.config import build_config
    from genalign.trainer import Trainer

    from tests.core.helpers import tiny_config

    cfg = tiny_config(tiny_path, str(tmp_path / "run"), train__iterations=1, train__save_every=1,
                      train__eval_every=1, train__rollout_batch_size=4, train__train_batch_size=4,
                      algorithm={"name": "grpo", "clip_range": 1e-4, "beta": 0.0},
                      rewards=[{"name": "loudness"}], data__group_size=2)
    cfg["model"] = {"family": "stable_audio", "path": tiny_path, "lora": {"rank": 4, "alpha": 8}}
    cfg["sampler"] = {"num_steps": 3, "eval_num_steps": 2, "guidance_scale": 1.0, "kernel": "ddim", "eta": 1.0}
    cfg["task"] = "t2a"
    t = Trainer(build_config(cfg))
    t.setup()
    before = {n: p.detach().clone() for n, p in t.generator.named_trainable_parameters()}
    t.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert abs(rows[0]["ratio"] - 1.0) <= 1e-6 and rows[0]["clipfrac"] == 0.0
    changed = [n for n, p in t.generator.named_trainable_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed
    ck = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    assert (ck / "adapter_model.safetensors").exists() and (ck / "pytorch_lora_weights.safetensors").exists()
    wavs = [f for _, _, fs in os.walk(tmp_path / "run" / "samples") for f in fs if f.endswith(".wav")]
    assert wavs


def test_genalign_sample_on_audio_with_a_lora(gen, tiny_path, tmp_path, capsys):
    """`genalign sample` guesses the family, writes WAVs + spectrogram grid + index.html, applies a PEFT LoRA folder
    (fused: the WAVs differ from the base's), and rejects a bad --seconds in one line."""
    from genalign.cli import main

    gen.save_lora(str(tmp_path / "lora"))
    args = ["sample", "--model", tiny_path, "--prompt", "a C note", "--seeds", "0", "--steps", "3", "--guidance",
            "1"]
    assert main(args + ["--out", str(tmp_path / "base")]) == 0
    assert main(args + ["--out", str(tmp_path / "tuned"), "--lora", str(tmp_path / "lora")]) == 0
    files = set(os.listdir(tmp_path / "tuned"))
    assert {"0000_seed0.wav", "grid.png", "index.html", "samples.jsonl"} <= files
    from genalign.rewards.encoders import decode_wav

    a, sr = decode_wav((tmp_path / "base" / "0000_seed0.wav").read_bytes())
    b, _ = decode_wav((tmp_path / "tuned" / "0000_seed0.wav").read_bytes())
    assert sr == 4 and a.shape == b.shape == (2, 8) and float((a - b).abs().max()) > 0
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "bad"), "--seconds", "9"]) != 0
    err = capsys.readouterr().err.strip()
    assert "'model.seconds' is 9.0" in err and "\n" not in err
