"""GRPO ``kl_steps="all"``: with a window of trained steps, the KL also anchors the untrained steps (all but the
last) on the visited states; ``"trained"`` (the default) keeps it on the trained steps only."""

from __future__ import annotations

import pytest
import torch

from genalign.algorithms.grpo import GRPO
from genalign.config import ModelConfig, SamplerConfig
from genalign.core.phases import Batch
from genalign.errors import ConfigError
from genalign.losses.ppo import mean_kl
from genalign.models.sd3 import SD3Generator

from .test_no_reference_at_zero_kl import CountingView


@pytest.fixture(scope="module")
def setup(tiny_sd3):
    cfg = ModelConfig(family="sd3", path=tiny_sd3, height=32, width=32, max_sequence_length=8)
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    gen = SD3Generator.load(cfg)
    scfg = SamplerConfig(num_steps=4, guidance_scale=1.0, kernel="sde", noise_level=0.7, train_timesteps="window",
                         window_size=1)
    ro = gen.rollout(["a red cube", "a cat"], [1, 2], scfg, window_start=1)
    assert ro.train_steps[0].tolist() == [1]  # only step 1 is stochastic and trained
    return gen, scfg, ro


def _units(alg, gen, scfg, ro):
    view = CountingView(gen, scfg)
    alg.setup(view)
    batch = Batch(iteration=0, rollout=ro, adv=torch.tensor([1.0, -1.0]))
    return list(alg.losses(view, batch, [0, 1])), alg.units(batch, [0, 1]), view


def test_bad_kl_steps_is_one_line_error():
    with pytest.raises(ConfigError, match="kl_steps.*valid choices: all, trained"):
        GRPO(beta=0.1, kl_steps="window")
    with pytest.raises(ConfigError, match="kl_anchor_fraction.*\\(0, 1\\]"):
        GRPO(beta=0.1, kl_steps="all", kl_anchor_fraction=0.0)
    with pytest.raises(ConfigError, match="kl_anchor_beta.*>= 0"):
        GRPO(beta=0.1, kl_steps="all", kl_anchor_beta=-1.0)


@pytest.mark.parametrize("kl_steps,beta,n_units", [("trained", 0.1, 1), ("all", 0.1, 3), ("all", 0.0, 1)])
def test_anchor_units(setup, kl_steps, beta, n_units):
    gen, scfg, ro = setup
    units, declared, view = _units(GRPO(beta=beta, kl_steps=kl_steps), gen, scfg, ro)
    assert len(units) == declared == n_units  # steps 0 and 2 anchored, step 3 (the last) never; none at β 0
    assert view.reference_calls == (n_units if beta > 0 else 0)


def test_anchor_loss_is_the_kernel_kl_and_pulls_back(setup):
    gen, scfg, ro = setup
    params = [p for p in gen.trainable_parameters()]
    saved = [p.detach().clone() for p in params]
    try:
        units, _, _ = _units(GRPO(beta=2.0, kl_steps="all"), gen, scfg, ro)
        assert [st["kl_anchor"] for _, st in units[1:]] == [0.0, 0.0]  # the LoRA starts at the reference
        torch.manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn_like(p))
        units, _, _ = _units(GRPO(beta=2.0, kl_steps="all"), gen, scfg, ro)
        anchor = units[1][0]  # step 0
        light, _, _ = _units(GRPO(beta=2.0, kl_steps="all", kl_anchor_beta=0.5), gen, scfg, ro)
        torch.testing.assert_close(light[1][0].detach(), anchor.detach() / 4)  # its own weight on the anchors only
        torch.testing.assert_close(light[0][0].detach(), units[0][0].detach())
        j = torch.zeros(2, dtype=torch.long)
        with torch.no_grad():
            _, mu, std = gen.step_log_prob(gen.denoiser, ro, j, scfg)
            with gen.reference() as ref:
                _, mu_ref, _ = gen.step_log_prob(ref, ro, j, scfg)
            want = 2.0 * mean_kl(mu, mu_ref, std, gen.law.step_dt(ro.schedule, j), "flow_grpo").mean()
        assert float(anchor.detach()) > 0
        torch.testing.assert_close(anchor.detach(), want, rtol=1e-5, atol=0)
        half, _, _ = _units(GRPO(beta=2.0, kl_steps="all", kl_anchor_fraction=0.5), gen, scfg, ro)
        first = 2.0 * mean_kl(mu[:1], mu_ref[:1], std[:1], gen.law.step_dt(ro.schedule, j[:1]), "flow_grpo").mean()
        torch.testing.assert_close(half[1][0].detach(), first, rtol=1e-5, atol=0)  # sample 0 of the two
        torch.testing.assert_close(half[0][0].detach(), units[0][0].detach())  # the trained step keeps both
        total = sum(loss for loss, _ in units[1:])
        grads = torch.autograd.grad(total, params, allow_unused=True)
        with torch.no_grad():  # one small gradient step on the anchors brings the policy back toward the reference
            for p, g in zip(params, grads):
                if g is not None:
                    p.sub_(1e-2 * g / max(float(sum((x ** 2).sum() for x in grads if x is not None)) ** 0.5, 1e-12))
        after, _, _ = _units(GRPO(beta=2.0, kl_steps="all"), gen, scfg, ro)
        assert float(sum(loss.detach() for loss, _ in after[1:])) < float(total.detach())
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
