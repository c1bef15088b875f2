"""Trainer behaviour on a tiny random-weight SD3 pipeline: what trains, resume, export round trip, NaN rewards."""

import json
import os

import pytest
import torch

from genalign.config import build_config
from genalign.trainer import Trainer, latest_checkpoint

from .helpers import tiny_config


def make_trainer(tiny_sd3, out, **over):
    return Trainer(build_config(tiny_config(tiny_sd3, str(out), **over)))


def test_training_changes_every_lora_param_and_nothing_frozen(tiny_sd3, tmp_path):
    t = make_trainer(tiny_sd3, tmp_path / "run")
    t.setup()
    named = dict(t.generator.denoiser.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    frozen_other = {k: v.detach().clone() for k, v in t.generator.pipe.vae.state_dict().items()}
    t.train()
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    for n, p in named.items():
        if n in trainable:
            assert not torch.equal(p.detach(), before[n]), f"trainable {n} did not change"
        else:
            assert torch.equal(p.detach(), before[n]), f"frozen {n} changed"
    for k, v in t.generator.pipe.vae.state_dict().items():
        assert torch.equal(v, frozen_other[k])
    # run directory contract
    out = tmp_path / "run"
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert len(rows) == 2
    for key in ("step", "reward_mean", "reward_std", "loss", "kl", "clipfrac", "approx_kl", "seconds"):
        assert key in rows[0]
    assert (out / "config.yaml").exists()
    assert (out / "samples" / "iter_000000.png").exists() and (out / "samples" / "iter_000002.png").exists()
    recs = [json.loads(l) for l in open(out / "samples" / "samples.jsonl")]
    assert {"prompt", "seed", "rewards", "file"} <= set(recs[0])
    ck = latest_checkpoint(str(out))
    assert ck.endswith("checkpoint-2")
    assert os.path.exists(os.path.join(ck, "pytorch_lora_weights.safetensors"))
    assert not os.path.exists(os.path.join(ck, "model.safetensors"))  # no raw full state dict


def _lora(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "pytorch_lora_weights.safetensors"))


def test_kill_and_resume_reaches_the_same_parameters(tiny_sd3, tmp_path):
    ema = {"decay": 0.5, "every": 1}
    full = make_trainer(tiny_sd3, tmp_path / "full", train__iterations=4, train__save_every=2,
                        train__optimizer_steps_per_iteration=2, train__ema=ema)
    full.train()
    stopped = make_trainer(tiny_sd3, tmp_path / "resumed", train__iterations=2, train__save_every=2,
                           train__optimizer_steps_per_iteration=2, train__ema=ema)
    stopped.train()
    # a half-written checkpoint left by a crash is ignored
    os.makedirs(tmp_path / "resumed" / "checkpoints" / ".checkpoint-3.tmp")
    cfg = tiny_config(tiny_sd3, str(tmp_path / "resumed"), train__iterations=4, train__save_every=2,
                      train__optimizer_steps_per_iteration=2, train__ema=ema)
    cfg["run"]["resume"] = True
    resumed = Trainer(build_config(cfg))
    resumed.train()
    assert resumed.optimizer_step == full.optimizer_step == 8
    a, b = _lora(latest_checkpoint(str(tmp_path / "full"))), _lora(latest_checkpoint(str(tmp_path / "resumed")))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # the EMA weights (restored from the checkpoint's safetensors) agree too, and differ from the live weights
    ea = _lora(os.path.join(latest_checkpoint(str(tmp_path / "full")), "ema"))
    eb = _lora(os.path.join(latest_checkpoint(str(tmp_path / "resumed")), "ema"))
    for k in ea:
        assert torch.allclose(ea[k], eb[k], atol=1e-6, rtol=0), k
    assert any(not torch.allclose(ea[k], a[k]) for k in a)
    rows = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_export_round_trip_and_fuse(tiny_sd3, tmp_path):
    from diffusers import DiffusionPipeline

    from genalign.export import export

    t = make_trainer(tiny_sd3, tmp_path / "run", train__learning_rate=5e-2)
    t.train()
    ck = latest_checkpoint(str(tmp_path / "run"))
    prompts, seeds = ["a red cube", "a blue ball"], [3, 4]
    policy = t.generator.rollout(prompts, seeds, t.cfg.sampler, num_steps=4, stochastic=False).samples
    with t.generator.reference():
        base = t.generator.rollout(prompts, seeds, t.cfg.sampler, num_steps=4, stochastic=False).samples
    assert (policy - base).abs().max() > 1e-4  # training changed the outputs, so the check below means something
    latents = t.generator.initial_noise(seeds)

    def stock(pipe):
        return pipe(prompt=prompts, num_inference_steps=4, guidance_scale=t.cfg.sampler.guidance_scale, height=16,
                    width=16, latents=latents, output_type="pt").images

    lora_dir = export(ck, str(tmp_path / "lora"))
    pipe = DiffusionPipeline.from_pretrained(tiny_sd3, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora_dir)
    assert torch.allclose(stock(pipe), policy, atol=2e-4)
    fused = export(ck, str(tmp_path / "fused"), fuse=True)
    assert os.path.exists(os.path.join(fused, "README.md"))
    assert not any(f.endswith(".bin") for _, _, fs in os.walk(fused) for f in fs)
    pipe2 = DiffusionPipeline.from_pretrained(fused, text_encoder_3=None, tokenizer_3=None)
    pipe2.set_progress_bar_config(disable=True)
    assert torch.allclose(stock(pipe2), policy, atol=2e-4)


def test_nan_rewards_skip_the_update_and_the_run_continues(tiny_sd3, tmp_path):
    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"))
    cfg["rewards"] = [{"name": "tests.core.rewards_for_tests:NaNReward"}]
    t = Trainer(build_config(cfg))
    t.setup()
    before = [p.detach().clone() for p in t.generator.trainable_parameters()]
    t.train()
    assert t.counters["skipped_nonfinite_reward"] == 2
    assert t.optimizer_step == 0
    for p, b in zip(t.generator.trainable_parameters(), before):
        assert torch.equal(p.detach(), b)


def test_full_fine_tuning_trains_the_denoiser_keeps_the_reference_and_reloads(tiny_sd3, tmp_path):
    """model.lora.rank 0: every denoiser weight trains, the KL reference is a frozen copy of the base, the checkpoint
    holds the denoiser in diffusers layout, and Generator.load_checkpoint / `genalign eval` read it back."""
    from genalign.errors import CheckpointError
    from genalign.registry import MODELS

    t = make_trainer(tiny_sd3, tmp_path / "run", model__lora={"rank": 0}, train__save_every=2)
    t.setup()
    base = {n: p.detach().clone() for n, p in t.generator.denoiser.named_parameters()}
    t.train()
    now = dict(t.generator.denoiser.named_parameters())
    assert all(p.requires_grad for p in now.values())
    assert sum(not torch.equal(now[n].detach(), base[n]) for n in base) > 0.9 * len(base)
    ref = dict(t.generator.ref_denoiser.named_parameters())
    assert all(torch.equal(ref[n], base[n]) for n in base)  # the reference did not move
    ck = latest_checkpoint(str(tmp_path / "run"))
    assert os.path.isdir(os.path.join(ck, "transformer"))
    assert not os.path.exists(os.path.join(ck, "pytorch_lora_weights.safetensors"))
    fresh = MODELS.get("sd3").load(t.cfg.model)
    fresh.load_checkpoint(ck)
    got = dict(fresh.denoiser.named_parameters())
    assert all(torch.equal(got[n], now[n].detach()) for n in base)
    # a LoRA-loaded generator refuses a full checkpoint with a message naming the mismatch
    lora_cfg = build_config(tiny_config(tiny_sd3, str(tmp_path / "x"))).model
    with pytest.raises(CheckpointError, match="full fine-tune"):
        MODELS.get("sd3").load(lora_cfg).load_checkpoint(ck)


def test_full_fine_tune_ema_exports_and_samples_the_ema_weights(tiny_sd3, tmp_path):
    """A full fine-tune with an EMA writes the EMA denoiser into the checkpoint's ema/ folder, and `export --ema`
    puts those weights (not the live ones) into a pipeline that diffusers loads."""
    from diffusers import DiffusionPipeline

    from genalign.export import export

    lora = {"rank": 0}
    t = make_trainer(tiny_sd3, tmp_path / "run", model__lora=lora, train__learning_rate=1e-3, train__iterations=2,
                     train__save_every=2, train__ema={"decay": 0.5, "every": 1})
    t.train()
    ck = latest_checkpoint(str(tmp_path / "run"))
    shadow = [s.detach().clone() for s in t.parts["policy"].ema.shadow]
    live = [p.detach().clone() for p in t.generator.trainable_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(shadow, live))
    out = export(ck, str(tmp_path / "ema_pipe"), ema=True)
    pipe = DiffusionPipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    got = list(pipe.transformer.parameters())
    assert len(got) == len(shadow)
    for g, s in zip(got, shadow):
        torch.testing.assert_close(g, s.to(g.dtype), rtol=0, atol=0)
