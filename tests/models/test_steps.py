"""Step kernels of genalign/models/steps.py against independently computed Gaussian transitions.

Expected values are written out from the formulas of METHODS.md §2 with concrete numbers (plain Python floats)
and log-densities come from ``torch.distributions.Normal``; DDIM is also checked against diffusers'
``DDIMScheduler.step`` with the same variance noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from genalign.models import steps as K

N, C, H, W = 2, 3, 2, 2
D = C * H * W


def _t(seed):
    return torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed))


X, V, Z, XP = _t(0), _t(1), _t(2), _t(3)  # state, model output, noise, a given next state


def _normal_lp(x, mean, std, reduce="mean"):
    lp = Normal(mean.double(), torch.as_tensor(std, dtype=torch.float64)).log_prob(x.double())
    lp = lp.flatten(1)
    return (lp.mean(1) if reduce == "mean" else lp.sum(1)).float()


def test_gaussian_log_prob_matches_normal():
    std = torch.tensor([0.5, 2.0])
    mean = 0.3 * X
    got = K.gaussian_log_prob(XP, mean, std, "mean")
    exp = torch.stack([_normal_lp(XP[i : i + 1], mean[i : i + 1], float(std[i]))[0] for i in range(N)])
    torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-6)
    # one concrete element by hand: x=1, μ=0, s=2 → −1/8 − log 2 − ½log 2π
    one = K.gaussian_log_prob(torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([2.0]), "sum")
    assert float(one) == pytest.approx(-1 / 8 - math.log(2) - 0.5 * math.log(2 * math.pi), abs=1e-6)
    with pytest.raises(ValueError, match="reduce"):
        K.gaussian_log_prob(XP, mean, std, "max")


def test_flow_sde_step_by_hand():
    # σ = 0.8, σ' = 0.6, a = 0.7: s_t = 0.7·sqrt(0.8/0.2) = 1.4, dt = −0.2
    s_t, dt = 1.4, -0.2
    c_x = 1 + s_t**2 / (2 * 0.8) * dt  # 1 − 0.245 = 0.755
    c_v = (1 + s_t**2 * 0.2 / (2 * 0.8)) * dt  # 1.245·(−0.2) = −0.249
    assert c_x == pytest.approx(0.755) and c_v == pytest.approx(-0.249)
    mean = c_x * X + c_v * V
    std = s_t * math.sqrt(0.2)
    out = K.flow_sde_step(V, X, 0.8, 0.6, 0.7, noise=Z)
    torch.testing.assert_close(out.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.std, torch.full((N,), std), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.prev_sample, mean + std * Z, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.log_prob, _normal_lp(mean + std * Z, mean, std), atol=1e-5, rtol=1e-6)
    # the log-prob of a given next state (what training recomputes)
    given = K.flow_sde_step(V, X, 0.8, 0.6, 0.7, prev_sample=XP)
    torch.testing.assert_close(given.prev_sample, XP)
    torch.testing.assert_close(given.log_prob, _normal_lp(XP, mean, std), atol=1e-5, rtol=1e-6)


def test_flow_sde_at_sigma_one_uses_next_sigma():
    # σ = 1 would divide by 0; the denominator uses 1 − σ_1. σ_1 = 0.75: s_t = 0.7·sqrt(1/0.25) = 1.4
    s_t, dt = 0.7 * math.sqrt(1 / 0.25), -0.25
    out = K.flow_sde_step(V, X, 1.0, 0.75, 0.7, sigma_for_one=0.75, noise=Z)
    assert torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.std, torch.full((N,), s_t * math.sqrt(0.25)), atol=1e-6, rtol=1e-6)
    mean = X * (1 + s_t**2 / 2 * dt) + V * dt  # (1−σ) = 0 kills the v correction
    torch.testing.assert_close(out.mean, mean, atol=1e-6, rtol=1e-6)
    assert float(K.flow_sde_std(1.0, 0.75, 0.7)) == pytest.approx(1.4, rel=1e-6)
    assert float(K.flow_sde_std(0.5, 0.75, 0.7)) == pytest.approx(0.7, rel=1e-6)  # σ<1: own σ
    # a schedule's σ_1 is passed explicitly (default would be σ' itself)
    other = K.flow_sde_step(V, X, 1.0, 0.9, 0.7, sigma_for_one=0.75, noise=Z)
    torch.testing.assert_close(other.std, torch.full((N,), s_t * math.sqrt(0.1)), atol=1e-6, rtol=1e-6)


def test_flow_eta_step_by_hand():
    # σ = 0.5, σ' = 0.3, η = 0.3: score = −(x + (1−σ)v)/σ = −(x + 0.5v)/0.5 (METHODS.md §1 table)
    sigma, dt, eta = 0.5, -0.2, 0.3
    score = -(X + 0.5 * V) / sigma
    mean = X + dt * (V - 0.5 * eta**2 * score)
    std = eta * math.sqrt(0.2)
    out = K.flow_eta_step(V, X, 0.5, 0.3, eta, noise=Z)
    torch.testing.assert_close(out.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.std, torch.full((N,), std), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.log_prob, _normal_lp(mean + std * Z, mean, std), atol=1e-5, rtol=1e-6)


def test_flow_cps_step_simplified_and_gaussian():
    # σ = 0.6, σ' = 0.4, a = 0.8: x̂0 = x − 0.6v, ε̂ = x + 0.4v, ρ = 0.4·sin(0.4π),
    # μ = 0.6x̂0 + 0.4·cos(0.4π)ε̂
    x0, eps = X - 0.6 * V, X + 0.4 * V
    rho = 0.4 * math.sin(0.4 * math.pi)
    mean = 0.6 * x0 + 0.4 * math.cos(0.4 * math.pi) * eps
    simp = K.flow_cps_step(V, X, 0.6, 0.4, 0.8, logprob="simplified", noise=Z)
    torch.testing.assert_close(simp.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(simp.std, torch.full((N,), rho), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(simp.prev_sample, mean + rho * Z, atol=1e-6, rtol=1e-6)
    # simplified = −mean_d (x'−μ)² = −ρ²·mean_d z²: no 1/(2ρ²), no normaliser — not a likelihood
    torch.testing.assert_close(simp.log_prob, -(rho**2) * (Z**2).flatten(1).mean(1), atol=1e-6, rtol=1e-5)
    gaus = K.flow_cps_step(V, X, 0.6, 0.4, 0.8, logprob="gaussian", noise=Z)
    torch.testing.assert_close(gaus.log_prob, _normal_lp(mean + rho * Z, mean, rho), atol=1e-5, rtol=1e-6)
    # the two differ by the dropped scale and constants: g = s/(2ρ²) − log ρ − ½log 2π
    expect = simp.log_prob / (2 * rho**2) - math.log(rho) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(gaus.log_prob, expect, atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="cps logprob"):
        K.flow_cps_step(V, X, 0.6, 0.4, 0.8, logprob="exact", noise=Z)


def test_flow_cps_last_step_is_deterministic():
    out = K.flow_cps_step(V, X, 0.25, 0.0, 0.8, noise=Z)
    assert out.log_prob is None
    torch.testing.assert_close(out.prev_sample, X - 0.25 * V, atol=1e-6, rtol=1e-6)  # x' = x̂0
    assert torch.all(out.std == 0)


def test_flow_ode_step_has_no_log_prob():
    out = K.flow_ode_step(V, X, 0.7, 0.2)
    assert out.log_prob is None and torch.all(out.std == 0)
    torch.testing.assert_close(out.prev_sample, X - 0.5 * V, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.mean, out.prev_sample)


def test_zero_std_on_stochastic_kernel_raises():
    with pytest.raises(ValueError, match="std is 0"):
        K.flow_eta_step(V, X, 0.5, 0.5, 0.3, noise=Z)  # dt = 0


def _ddim_ref(a_t, a_p, eta):
    """DDIM (Song et al. Eq. 12/16) written out: ε-prediction."""
    x0 = (X - math.sqrt(1 - a_t) * V) / math.sqrt(a_t)
    s = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    return math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - s**2) * V, s


def test_ddim_eta0_deterministic():
    a_t, a_p = 0.3, 0.7
    mean, s = _ddim_ref(a_t, a_p, 0.0)
    assert s == 0
    out = K.ddim_step(V, X, a_t, a_p, 0.0)
    assert out.log_prob is None and torch.all(out.std == 0)
    torch.testing.assert_close(out.prev_sample, mean, atol=1e-6, rtol=1e-6)


def test_ddim_eta1_variance_and_log_prob():
    a_t, a_p = 0.3, 0.7
    mean, s = _ddim_ref(a_t, a_p, 1.0)
    # σ_t² = (1−ᾱ_{t−1})/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_{t−1}) = (0.3/0.7)·(1 − 3/7) = 12/49
    assert s**2 == pytest.approx(12 / 49)
    out = K.ddim_step(V, X, a_t, a_p, 1.0, noise=Z)
    torch.testing.assert_close(out.std, torch.full((N,), math.sqrt(12 / 49)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.prev_sample, mean + s * Z, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.log_prob, _normal_lp(mean + s * Z, mean, s), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_scheduler(prediction_type, eta):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    sch.set_timesteps(10)
    t = int(sch.timesteps[3])
    a_t = float(sch.alphas_cumprod[t])
    a_p = float(sch.alphas_cumprod[t - 100])
    ref = sch.step(V, t, X, eta=eta, variance_noise=Z).prev_sample
    out = K.ddim_step(V, X, a_t, a_p, eta, prediction_type=prediction_type, noise=Z)
    torch.testing.assert_close(out.prev_sample, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        K.ddim_step(V, X, a_t, a_p, eta, prediction_type="sample", noise=Z)


def test_ddim_v_prediction_converts_to_eps():
    a_t, a_p = 0.4, 0.8
    x0 = math.sqrt(a_t) * X - math.sqrt(1 - a_t) * V
    eps = math.sqrt(1 - a_t) * X + math.sqrt(a_t) * V
    out = K.ddim_step(V, X, a_t, a_p, 0.0, prediction_type="v_prediction")
    torch.testing.assert_close(out.prev_sample, math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["sde", "eta", "cps_gaussian", "cps_simplified", "ddim"])
def test_sum_reduction_is_D_times_mean(kernel):
    def run(reduce):
        if kernel == "sde":
            return K.flow_sde_step(V, X, 0.8, 0.6, 0.7, prev_sample=XP, reduce=reduce)
        if kernel == "eta":
            return K.flow_eta_step(V, X, 0.8, 0.6, 0.3, prev_sample=XP, reduce=reduce)
        if kernel.startswith("cps"):
            return K.flow_cps_step(V, X, 0.8, 0.6, 0.8, logprob=kernel[4:], prev_sample=XP, reduce=reduce)
        return K.ddim_step(V, X, 0.3, 0.7, 1.0, prev_sample=XP, reduce=reduce)

    lm, ls = run("mean").log_prob, run("sum").log_prob
    torch.testing.assert_close(ls, D * lm, atol=1e-4, rtol=1e-5)
    # log-ratio scales the same way: log r_sum = D·log r_mean
    other = K.flow_sde_step(1.1 * V, X, 0.8, 0.6, 0.7, prev_sample=XP, reduce="mean").log_prob
    other_s = K.flow_sde_step(1.1 * V, X, 0.8, 0.6, 0.7, prev_sample=XP, reduce="sum").log_prob
    if kernel == "sde":
        torch.testing.assert_close(other_s - ls, D * (other - lm), atol=1e-4, rtol=1e-5)


def test_per_sample_sigmas_broadcast():
    """A (N,) σ tensor gives each sample its own transition (used when steps differ within a batch)."""
    out = K.flow_sde_step(V, X, torch.tensor([0.8, 0.5]), torch.tensor([0.6, 0.3]), 0.7, prev_sample=XP)
    a = K.flow_sde_step(V[:1], X[:1], 0.8, 0.6, 0.7, prev_sample=XP[:1])
    b = K.flow_sde_step(V[1:], X[1:], 0.5, 0.3, 0.7, prev_sample=XP[1:])
    torch.testing.assert_close(out.log_prob, torch.cat([a.log_prob, b.log_prob]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.std, torch.cat([a.std, b.std]), atol=1e-7, rtol=1e-6)
