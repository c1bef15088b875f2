"""``model.base_from``: the trained weights denoise the steps before ⌈f·T⌉, the base the rest (two experts by noise
level), in every rollout; a stochastic (trained) step on the base's steps is a one-line error; GRPO's KL anchors
stay on the policy's own steps; a full fine-tune keeps the base as it was loaded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genalign.algorithms.grpo import GRPO
from genalign.config import ModelConfig, SamplerConfig
from genalign.errors import ConfigError
from genalign.models.sd3 import SD3Generator

from ..algorithms.test_no_reference_at_zero_kl import CountingView


def _cfg(tiny_sd3, rank=4, base_from=0.5):
    cfg = ModelConfig(family="sd3", path=tiny_sd3, height=32, width=32, max_sequence_length=8, base_from=base_from)
    cfg.lora.rank, cfg.lora.alpha = rank, float(2 * rank)
    return cfg


def _perturb(params, scale=0.05):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def lora_pair(tiny_sd3):
    """The same LoRA weights (perturbed, so policy and base differ) with and without the base expert."""
    gated = SD3Generator.load(_cfg(tiny_sd3))
    _perturb(gated.trainable_parameters())
    plain = SD3Generator.load(_cfg(tiny_sd3, base_from=None))
    with torch.no_grad():
        for a, b in zip(plain.trainable_parameters(), gated.trainable_parameters()):
            a.copy_(b)
    return gated, plain


@pytest.mark.parametrize("f,T,want", [(None, 10, 10), (0.5, 10, 5), (0.5, 4, 2), (0.45, 10, 5), (0.01, 10, 1),
                                      (0.3, 40, 12)])
def test_base_step(tiny_sd3, f, T, want):
    gen = SD3Generator.__new__(SD3Generator)
    gen.cfg = _cfg(tiny_sd3, base_from=f)
    assert gen.base_step(T) == want


def test_rollout_hands_the_late_steps_to_the_base(lora_pair):
    gated, plain = lora_pair
    scfg = SamplerConfig(num_steps=4, guidance_scale=1.0, kernel="sde")
    g = gated.rollout(["a red cube", "a cat"], [1, 2], scfg, stochastic=False)
    p = plain.rollout(["a red cube", "a cat"], [1, 2], scfg, stochastic=False)
    torch.testing.assert_close(g.states[:, :3], p.states[:, :3])  # steps 0, 1: the trained weights in both
    assert (g.states[:, 3:] - p.states[:, 3:]).abs().max() > 1e-4  # steps 2, 3: the base in the gated one
    sch = g.schedule
    with torch.no_grad():
        x = g.states[:, 2]
        with gated.reference() as base:  # the LoRA disabled
            out = gated.predict(base, x, sch.timesteps[2], g.cond, 1.0)
        want = gated.kernel_step(out, x, 2, sch, scfg, False).prev_sample
        torch.testing.assert_close(g.states[:, 3], want)
        out = gated.predict(gated.denoiser, x, sch.timesteps[2], g.cond, 1.0)  # adapters are back on afterwards
        mine = gated.kernel_step(out, x, 2, sch, scfg, False).prev_sample
    torch.testing.assert_close(mine, p.states[:, 3])


def test_a_window_on_the_base_steps_is_a_one_line_error(lora_pair):
    gated, _ = lora_pair
    scfg = SamplerConfig(num_steps=4, guidance_scale=1.0, kernel="sde", train_timesteps="window", window_size=2)
    gated.rollout(["a cat"], [1], scfg, window_start=0)  # steps 0, 1: the policy's
    want = (r"^'model.base_from' 0.5 hands steps 2..3 of 4 to the base, but the sampler's stochastic \(trained\) "
            r"steps reach step 2; end the window before step 2")
    with pytest.raises(ConfigError, match=want):
        gated.rollout(["a cat"], [1], scfg, window_start=1)


def test_grpo_anchors_only_the_policy_steps(lora_pair):
    gated, plain = lora_pair
    scfg = SamplerConfig(num_steps=4, guidance_scale=1.0, kernel="sde", train_timesteps="window", window_size=1)
    for gen, want in ((plain, [1, 2]), (gated, [1])):  # step 0 trained, step 3 the last; step 2 the base's
        ro = gen.rollout(["a cat"], [1], scfg, window_start=0)
        alg = GRPO(beta=0.1, kl_steps="all")
        alg.setup(CountingView(gen, scfg))
        assert alg.anchor_steps(ro) == want


def test_full_fine_tune_keeps_the_loaded_base(tiny_sd3):
    gen = SD3Generator.load(_cfg(tiny_sd3, rank=0))
    assert gen.ref_denoiser is not None and gen.ref_denoiser is not gen.denoiser
    before = [p.detach().clone() for p in gen.denoiser.parameters()]
    _perturb(gen.trainable_parameters())  # what training or a loaded checkpoint does to the policy
    for p, q in zip(gen.ref_denoiser.parameters(), before):
        torch.testing.assert_close(p, q)
    assert not any(p.requires_grad for p in gen.ref_denoiser.parameters())
    plain = SD3Generator.load(dataclasses.replace(_cfg(tiny_sd3, rank=0), base_from=None))
    assert plain.ref_denoiser is None  # no copy unless asked for


@pytest.mark.parametrize("rank,fuse", [(2, False), (2, True), (0, True)])
def test_trained_two_experts_export_and_sample_reproduce_the_run(tmp_path, rank, fuse):
    """GRPO on the steps before the base's (window 0, base from step 2 of 4): the policy trains, the base's steps
    stay the base's; the export records the split (experts.json, model card) and `genalign sample` on it reproduces
    the trainer's own deterministic sampler, LoRA or fused."""
    import json
    import os

    import numpy as np
    from PIL import Image

    from genalign.cli import main
    from genalign.core.checkpoint import latest_checkpoint
    from genalign.export import export

    from ..algorithms.trainer_utils import make_config, trainer_for

    cfg = make_config(tmp_path, {"name": "grpo", "beta": 0.1, "kl_steps": "all"}, save_every=2)
    cfg.sampler.num_steps = cfg.sampler.eval_num_steps = 4
    cfg.sampler.train_timesteps, cfg.sampler.window_size, cfg.sampler.window_range = "window", 2, 0.25
    cfg.model.base_from, cfg.model.lora.rank = 0.5, rank
    tr = trainer_for(cfg)
    net = tr.generator.denoiser
    before = [p.detach().clone() for p in tr.generator.trainable_parameters()]
    base_before = None if rank else [p.detach().clone() for p in tr.generator.ref_denoiser.parameters()]
    tr.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.generator.trainable_parameters()))
    if not rank:  # the base expert is the loaded base, untouched by training
        assert all(torch.equal(a, b) for a, b in zip(base_before, tr.generator.ref_denoiser.parameters()))
    assert tr.generator.denoiser is net
    prompts, seeds = ["a red cube"], [5]
    with torch.no_grad():
        want = tr.generator.rollout(prompts, seeds, cfg.sampler, stochastic=False).samples
        gated_cfg, tr.generator.cfg = tr.generator.cfg, dataclasses.replace(tr.generator.cfg, base_from=None)
        try:  # the trained weights on every step are another model
            assert not torch.allclose(want, tr.generator.rollout(prompts, seeds, cfg.sampler, stochastic=False).samples)
        finally:
            tr.generator.cfg = gated_cfg
    out = export(latest_checkpoint(cfg.run.output_dir), str(tmp_path / "export"), fuse=fuse)
    experts = json.load(open(os.path.join(out, "experts.json")))
    assert experts == {"base_from": 0.5, "base_model": cfg.model.path, "family": "sd3"}
    assert "Two experts" in open(os.path.join(out, "README.md")).read()
    args = ["--model", out] if fuse else ["--model", cfg.model.path, "--lora", out]
    assert main(["sample", *args, "--prompt", prompts[0], "--seeds", "5", "--steps", "4", "--guidance",
                 str(cfg.sampler.guidance_scale), "--height", "16", "--width", "16", "--out", str(tmp_path / "s")]) == 0
    png = sorted(f for f in os.listdir(tmp_path / "s") if f.endswith("_seed5.png"))[0]
    img = torch.from_numpy(np.array(Image.open(tmp_path / "s" / png).convert("RGB"))).permute(2, 0, 1) / 255
    assert (img - want[0]).abs().max() <= 1 / 255 + 1e-6
