"""DMD2 on the trainer (tiny models): the student and the fake score (and GAN head) train at the TTUR ratio for a
flow and an ε family, every part round-trips through checkpoint/resume bit-identically, and an exported student
reproduces the in-training student's samples in a fresh stock pipeline."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.config import PartConfig
from genalign.errors import ConfigError
from tests.algorithms.trainer_utils import changed, make_config, snapshot, trainer_for


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dmd2_config(tmp_path, family="sd3", steps=2, rank=2, **alg):
    algorithm = {"name": "dmd2", "fake_updates_per_generator": 2, "real_guidance": 2.0, **alg}
    cfg = make_config(tmp_path, algorithm, rewards=[], family=family, iterations=2)
    cfg.sampler.num_steps = cfg.sampler.eval_num_steps = steps
    cfg.sampler.guidance_scale = 1.0
    cfg.sampler.kernel = "ode" if family == "sd3" else "ddim"
    cfg.model.lora.rank = rank
    if alg.get("gan"):
        cfg.data.real = "toy:digits"
    return cfg


def _params(ps):
    return [p.detach().clone() for p in ps]


def _n_changed(before, ps):
    return sum(int(not torch.equal(a, b)) for a, b in zip(before, ps))


@pytest.mark.parametrize("family,alg", [
    ("sd3", {"regression_weight": 0.25, "regression_pairs": 4, "regression_steps": 2, "regression_batch": 2}),
    ("sd", {"gan": True}),
])
def test_dmd2_iterations_train_student_and_fake_score_at_the_ttur_ratio(tmp_path, family, alg):
    cfg = dmd2_config(tmp_path, family, **alg)
    tr = trainer_for(cfg)
    names = ["fake_score", "gan_head"] if alg.get("gan") else ["fake_score"]
    before = {"policy": snapshot(tr), **{n: _params(tr.parts[n].params) for n in names}}
    # the fake score starts as the teacher: same predictions as the reference at a random point
    x = torch.randn(2, *tr.generator.latent_shape())
    cond = tr.generator.encode(["a red cube", "a blue ball"], 1.0)
    with torch.no_grad(), tr.generator.reference() as ref:
        torch.testing.assert_close(tr.generator.predict(tr.parts["fake_score"].raw, x, torch.tensor(500.0), cond, 1.0),
                                   tr.generator.predict(ref, x, torch.tensor(500.0), cond, 1.0))
    assert [ph.name for ph in tr.algorithm.phases(0)] == ["fake_score"]
    assert [ph.name for ph in tr.algorithm.phases(1)] == ["fake_score", "generator"]
    tr.train()
    assert changed(tr, before["policy"]) == len(before["policy"])
    for n in names:
        assert _n_changed(before[n], tr.parts[n].params) == len(before[n]), n
    assert tr.parts["fake_score"].steps == 2 and tr.parts["policy"].steps == 1
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert rows[1]["dm_loss"] > 0 and rows[0]["fake_score/fake_loss"] > 0
    if alg.get("gan"):
        assert "gan_g_loss" in rows[1] and "fake_score/gan_d_loss" in rows[0]
    else:
        assert rows[1]["reg_loss"] > 0


def test_dmd2_bad_options_and_gan_without_features():
    from genalign.algorithms.dmd2 import DMD2
    from genalign.models.base import Generator

    with pytest.raises(ConfigError, match="fake_updates_per_generator"):
        DMD2(fake_updates_per_generator=0)
    with pytest.raises(ConfigError, match="regression_distance"):
        DMD2(regression_distance="lpips")
    with pytest.raises(ConfigError, match="few_step_sigmas"):
        DMD2(few_step_sigmas="linear")
    from genalign.algorithms.dmd2 import student_schedule_steps
    from genalign.algorithms.rtdmd import RTDMD

    assert DMD2().few_step_sigmas == "stock" and RTDMD().few_step_sigmas == "uniform"  # RTDMD: its reference's
    assert student_schedule_steps("stock", 4) is None and student_schedule_steps("uniform", 4) == 4
    stub = Generator.__new__(Generator)
    stub.family = "flux"
    with pytest.raises(ConfigError, match="no denoiser features for a GAN head"):
        stub.feature_spec(None)


def _all_state(run):
    from genalign.core.checkpoint import latest_checkpoint

    ck = latest_checkpoint(run)
    out = {f"lora.{k}": v for k, v in load_file(os.path.join(ck, "pytorch_lora_weights.safetensors")).items()}
    for name in ("fake_score", "gan_head"):
        out.update({f"{name}.{k}": v for k, v in load_file(os.path.join(ck, "parts", f"{name}.safetensors")).items()})
    out.update({f"extra.{k}": v for k, v in load_file(os.path.join(ck, "extra_state.safetensors")).items()})
    return ck, out


def test_dmd2_kill_and_resume_is_bit_identical_across_all_parts(tmp_path):
    def cfg_for(run, iterations, resume=False):
        c = dmd2_config(tmp_path / run, "sd3", gan=True)
        c.train.iterations, c.train.save_every, c.run.resume = iterations, 2, resume
        c.train.parts = {"fake_score": PartConfig(ema_decay=0.5)}
        return c

    trainer_for(cfg_for("full", 4)).train()
    trainer_for(cfg_for("resumed", 2)).train()
    tr = trainer_for(cfg_for("resumed", 4, resume=True))
    assert tr.iteration == 2 and tr.parts["fake_score"].steps == 2
    tr.train()
    ck_a, a = _all_state(str(tmp_path / "full" / "run"))
    ck_b, b = _all_state(str(tmp_path / "resumed" / "run"))
    assert sorted(a) == sorted(b) and any(k.startswith("extra.ema@fake_score.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.load(open(os.path.join(ck_a, "trainer_state.json")))["part_steps"]
    assert sa == json.load(open(os.path.join(ck_b, "trainer_state.json")))["part_steps"]
    assert sa == {"policy": 2, "fake_score": 4, "gan_head": 4}


@pytest.mark.parametrize("family,rank,sigmas", [("sd3", 0, "stock"), ("sd", 2, "stock"), ("sd3", 2, "uniform")])
def test_exported_student_reproduces_the_training_student_in_a_fresh_stock_pipeline(tmp_path, family, rank, sigmas):
    from diffusers import DiffusionPipeline

    from genalign.core.checkpoint import latest_checkpoint
    from genalign.export import export

    fuse = False
    cfg = dmd2_config(tmp_path, family, steps=2, rank=rank, few_step_sigmas=sigmas)
    tr = trainer_for(cfg)
    tr.train()
    prompts, seeds = ["a red cube", "a blue ball"], [5, 6]
    with torch.no_grad():
        want = tr.generator.rollout(prompts, seeds, cfg.sampler, guidance_scale=1.0, stochastic=False).samples
    out = export(latest_checkpoint(cfg.run.output_dir), str(tmp_path / "student"), fuse=fuse)
    student = json.load(open(os.path.join(out, "student.json")))
    assert student["num_inference_steps"] == 2 and student["guidance_scale"] == 1.0
    kw = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {"safety_checker": None}
    if rank == 0:
        pipe = DiffusionPipeline.from_pretrained(out, **kw)
    else:  # a LoRA student: the base pipeline + the LoRA + the student's scheduler, all stock diffusers
        pipe = DiffusionPipeline.from_pretrained(cfg.model.path, **kw)
        pipe.load_lora_weights(out)
        pipe.scheduler = type(pipe.scheduler).from_pretrained(out, subfolder="scheduler")
        if family == "sd":
            assert pipe.scheduler.config.timestep_spacing == "trailing"
        else:  # uniform flow sigmas 1, ½ at K = 2 (shift s: the terminal is shift(½) = s/(1 + s))
            shift = float(pipe.scheduler.config.shift)
            assert pipe.scheduler.config.shift_terminal == pytest.approx(shift / (1 + shift))
            assert float(tr.generator.schedule(2).sigmas[1]) == pytest.approx(shift / (1 + shift))
    pipe.set_progress_bar_config(disable=True)
    lat = tr.generator.initial_noise(seeds)
    got = pipe(prompt=prompts, num_inference_steps=student["num_inference_steps"],
               guidance_scale=student["guidance_scale"], height=cfg.model.height, width=cfg.model.width,
               latents=lat, output_type="pt", **({"eta": 0.0} if family == "sd" else {})).images
    torch.testing.assert_close(got.float(), want.float(), atol=2e-4, rtol=0)
    assert not torch.allclose(want, tr.generator.decode(lat))  # a real sample, not the noise decoded
    if rank == 0:  # `genalign sample` on the exported folder: the student's own steps and guidance by default
        import numpy as np
        from PIL import Image

        from genalign.cli import main

        assert main(["sample", "--model", out, "--prompt", prompts[0], "--seeds", str(seeds[0]), "--out",
                     str(tmp_path / "s")]) == 0
        png = sorted(f for f in os.listdir(tmp_path / "s") if f.endswith("_seed5.png"))[0]
        img = torch.from_numpy(np.array(Image.open(tmp_path / "s" / png).convert("RGB"))).permute(2, 0, 1) / 255
        assert (img - want[0]).abs().max() <= 1 / 255 + 1e-6


def test_rtdmd_stage1_trains_student_and_fake_score_and_refuses_what_is_not_built(tmp_path):
    import types

    from genalign.algorithms.rtdmd import RTDMD

    with pytest.raises(ConfigError, match="stage 2"):
        RTDMD(stage=2)
    with pytest.raises(ConfigError, match="rectified-flow"):
        RTDMD().setup(types.SimpleNamespace(law=types.SimpleNamespace(name="vp")))
    cfg = dmd2_config(tmp_path, "sd3", steps=3)
    cfg.algorithm.name = "rtdmd"
    tr = trainer_for(cfg)
    before, fake0 = snapshot(tr), _params(tr.parts["fake_score"].params)
    tr.train()
    assert changed(tr, before) == len(before)
    assert _n_changed(fake0, tr.parts["fake_score"].params) == len(fake0)
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert rows[1]["dm_loss"] > 0 and rows[0]["fake_score/consistency_loss"] == rows[0]["fake_score/consistency_loss"]


def test_flow_student_samples_on_its_own_training_sigmas():
    """A K-step flow student trains and exports on 1, (K−1)/K, …, 1/K (DMD2's 999/749/499/249), not the stock
    1, .667, .334, .001 whose last step barely moves; other step counts keep the stock sigmas; a shifted scheduler
    ends at shift(1/K)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from genalign.config import ModelConfig
    from genalign.models.sd3 import SD3Generator
    from tests.algorithms.trainer_utils import tiny_model

    sch = SD3Generator.few_step_scheduler(FlowMatchEulerDiscreteScheduler(shift=1.0), 4)
    sch.set_timesteps(4)
    torch.testing.assert_close(sch.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), atol=1e-6, rtol=0)
    stock = FlowMatchEulerDiscreteScheduler(shift=1.0)
    stock.set_timesteps(4)
    torch.testing.assert_close(stock.sigmas, torch.tensor([1.0, 0.667, 0.334, 0.001, 0.0]), atol=1e-6, rtol=0)
    sch = SD3Generator.few_step_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 4)
    sch.set_timesteps(4)
    assert float(sch.sigmas[0]) == pytest.approx(1.0) and float(sch.sigmas[3]) == pytest.approx(0.5)  # 3·¼/(1+2·¼)
    assert SD3Generator.few_step_scheduler(FlowMatchEulerDiscreteScheduler(), 1).config.shift_terminal is None
    # the generator: the student's K gets them, any other step count the stock sigmas (the teacher's ODE pairs)
    mcfg = ModelConfig(family="sd3", path=tiny_model("sd3"), height=16, width=16)
    mcfg.lora.rank = 0
    gen = SD3Generator.load(mcfg)
    stock3, stock1 = gen.schedule(3).sigmas, gen.schedule(1).sigmas
    gen.prepare_few_step(4)
    s = float(gen.pipe.scheduler.config.shift)
    assert float(gen.schedule(4).sigmas[3]) == pytest.approx(s * 0.25 / (1 + (s - 1) * 0.25), abs=1e-6)
    torch.testing.assert_close(gen.schedule(3).sigmas, stock3)
    torch.testing.assert_close(gen.schedule(1).sigmas, stock1)
