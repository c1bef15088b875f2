"""No reference forward when its weight is 0: GRPO with β = 0 and DiffusionNFT with ref_weight = 0 never enter the
reference policy (nor keep a frozen copy for full fine-tuning); with a positive weight they do, once per trained
step. (DRAGON has no such weight: its Diffusion-DPO / -KTO losses are defined against the reference.)"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from genalign.algorithms.grpo import GRPO
from genalign.algorithms.nft import NFT
from genalign.config import ModelConfig, SamplerConfig
from genalign.core.phases import Batch
from genalign.models.sd3 import SD3Generator


class CountingView:
    """The members of genalign.core.view.View that GRPO and NFT losses use, on a bare generator."""

    def __init__(self, gen, scfg):
        self.generator, self.law, self.probe = gen, gen.law, False
        self.cfg = SimpleNamespace(sampler=scfg)
        self.reference_calls = 0

    def step_log_prob(self, mb, j, detach_uncond=False, model=None):
        return self.generator.step_log_prob(model if model is not None else self.generator.denoiser, mb, j,
                                            self.cfg.sampler, detach_uncond=detach_uncond)

    def predict(self, x, t, cond, guidance=1.0, part="policy", detach_uncond=False):
        return self.generator.predict(self.generator.denoiser, x, t, cond, guidance, detach_uncond)

    def parameters(self, part="policy"):
        return self.generator.trainable_parameters()

    def step_count(self, part="policy"):
        return 0

    @contextlib.contextmanager
    def reference(self):
        self.reference_calls += 1
        with torch.no_grad(), self.generator.reference() as ref:
            yield ref


@pytest.fixture(scope="module")
def setup(tiny_sd3):
    cfg = ModelConfig(family="sd3", path=tiny_sd3, height=32, width=32, max_sequence_length=8)
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    gen = SD3Generator.load(cfg)
    scfg = SamplerConfig(num_steps=3, guidance_scale=1.0, kernel="sde", noise_level=0.7)
    ro = gen.rollout(["a red cube", "a cat"], [1, 2], scfg)
    return gen, scfg, ro


@pytest.mark.parametrize("beta", [0.0, 0.01])
def test_grpo_reference_only_with_kl(setup, beta):
    gen, scfg, ro = setup
    alg = GRPO(beta=beta)
    view = CountingView(gen, scfg)
    alg.setup(view)
    assert (gen.ref_denoiser is None)  # LoRA: the reference is the adapter switched off, never a copy
    batch = Batch(iteration=0, rollout=ro, adv=torch.tensor([1.0, -1.0]))
    units = list(alg.losses(view, batch, [0, 1]))
    assert len(units) == ro.train_steps.shape[1] == 3  # every step of a 3-step SDE rollout is trained here
    assert view.reference_calls == (3 if beta > 0 else 0)
    assert all(torch.isfinite(loss) for loss, _ in units)


@pytest.mark.parametrize("ref_weight,calls", [(0.0, 0), (1e-4, 2)])
def test_nft_reference_only_with_weight(setup, ref_weight, calls):
    gen, scfg, ro = setup
    alg = NFT(ref_weight=ref_weight, num_train_timesteps=2)
    view = CountingView(gen, scfg)
    alg.setup(view)
    alg.after_parts(view)
    batch = Batch(iteration=0, rollout=ro, adv=torch.tensor([1.0, -1.0]))
    units = list(alg.losses(view, batch, [0, 1]))
    assert len(units) == 2 and view.reference_calls == calls


def test_full_fine_tuning_keeps_no_frozen_copy_without_kl(tiny_sd3):
    cfg = ModelConfig(family="sd3", path=tiny_sd3, height=32, width=32, max_sequence_length=8)
    cfg.lora.rank = 0
    gen = SD3Generator.load(cfg)
    view = CountingView(gen, SamplerConfig())
    GRPO(beta=0.0).setup(view)
    NFT(ref_weight=0.0).setup(view)
    assert gen.ref_denoiser is None
    GRPO(beta=0.04).setup(view)
    assert gen.ref_denoiser is not None
