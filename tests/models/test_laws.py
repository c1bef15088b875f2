"""Noise laws (genalign/models/laws.py) pinned against hand-computed values (METHODS.md §1, §14)."""

from __future__ import annotations

import math

import pytest
import torch

from genalign.algorithms.conversions import flow_to_vp
from genalign.config import SamplerConfig
from genalign.errors import ConfigError
from genalign.models import steps as K
from genalign.models.base import Schedule
from genalign.models.laws import EDM, VP, RectifiedFlow
from genalign.registry import MODELS

X0, EPS = torch.tensor([[2.0]]), torch.tensor([[-1.0]])


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------------- flow
def test_rectified_flow_by_hand():
    law = RectifiedFlow()
    x = law.interpolate(X0, EPS, 0.25)
    close(x, [[1.25]])  # 0.75·2 + 0.25·(−1)
    v = law.target(X0, EPS, 0.25)
    close(v, [[-3.0]])  # ε − x0
    close(law.x0_from(v, x, 0.25), X0)  # x − σv = 1.25 + 0.75
    close(law.eps_from(v, x, 0.25), EPS)  # x + (1−σ)v = 1.25 − 2.25
    close(law.pred_from(X0, EPS, 0.25), v)
    close(law.flow_velocity(v, x, 0.25), v)
    xf, tf = law.flow_state(x, 0.25)
    close(xf, x)
    assert tf == 0.25
    close(law.model_time(torch.tensor([0.25, 1.0])), [250.0, 1000.0])
    time, tm = law.sample_training_time(torch.tensor([0.0, 0.5]), 0.2, 0.6)
    close(time, [0.2, 0.4])
    close(tm, [200.0, 400.0])
    sch = Schedule(timesteps=torch.tensor([1000.0, 600.0, 250.0]), sigmas=torch.tensor([1.0, 0.6, 0.25, 0.0]))
    close(law.step_dt(sch, torch.tensor([0, 2])), [0.4, 0.25])
    close(law.schedule_times(sch), sch.sigmas)
    assert law.kernels == ("sde", "eta", "cps", "ode") and law.default_kernel == "sde"
    assert law.last_step_deterministic("cps") and not law.last_step_deterministic("sde")


def test_flow_model_time_follows_the_scheduler():
    class Sched:
        config = {"num_train_timesteps": 500}

    close(RectifiedFlow.from_scheduler(Sched()).model_time(0.5), 250.0)


def test_flow_kernel_step_is_the_steps_kernel():
    law = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    v, x, z = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    sch = Schedule(timesteps=torch.zeros(3), sigmas=torch.tensor([1.0, 0.7, 0.3, 0.0]))
    scfg = SamplerConfig(kernel="sde", noise_level=0.7)
    st = law.kernel_step(v, x, 1, sch, scfg, True, noise=z)
    ref = K.flow_sde_step(v, x, 0.7, 0.3, 0.7, sigma_for_one=sch.sigmas[1], noise=z)
    close(st.prev_sample, ref.prev_sample)
    close(st.log_prob, ref.log_prob)
    ode = law.kernel_step(v, x, 1, sch, scfg, False)
    close(ode.prev_sample, x - 0.4 * v)  # x + dt·v, dt = 0.3 − 0.7
    with pytest.raises(ConfigError, match="valid choices: cps, eta, ode, sde"):
        law.kernel_step(v, x, 1, sch, SamplerConfig(kernel="ddim"), True)
    with pytest.raises(ConfigError, match="deterministic"):
        law.kernel_step(v, x, 1, sch, SamplerConfig(kernel="ode"), True)


# --------------------------------------------------------------------------------------------------- VP
# ᾱ = 0.64: α = 0.8, σ = 0.6; x_t = 0.8·2 + 0.6·(−1) = 1.0
VP_TARGETS = {"epsilon": -1.0, "v_prediction": -2.0, "sample": 2.0}  # v = αε − σx0 = −0.8 − 1.2


@pytest.mark.parametrize("ptype", list(VP_TARGETS))
def test_vp_by_hand(ptype):
    law = VP(ptype)
    x = law.interpolate(X0, EPS, 0.64)
    close(x, [[1.0]])
    pred = law.target(X0, EPS, 0.64)
    close(pred, [[VP_TARGETS[ptype]]])
    close(law.x0_from(pred, x, 0.64), X0)
    close(law.eps_from(pred, x, 0.64), EPS)
    close(law.pred_from(X0, EPS, 0.64), pred)
    # same-SNR flow state: σ_f = σ/(α+σ) = 3/7, x_f = x/(α+σ) = 5/7 = (1 − 3/7)·2 + 3/7·(−1)
    xf, tf = law.flow_state(x, torch.tensor(0.64))
    close(xf, [[5 / 7]])
    close(tf, 3 / 7)
    close(law.flow_velocity(pred, x, 0.64), [[-3.0]])  # ε̂ − x̂0, whatever the prediction type


def test_vp_flow_state_inverts_the_flow_to_vp_mapping():
    g = torch.Generator().manual_seed(1)
    x_flow = torch.randn(3, 2, 2, generator=g)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    x_vp, abar = flow_to_vp(x_flow, sigma)
    back, s = VP().flow_state(x_vp, abar)
    close(back, x_flow, 1e-5)
    close(s, sigma, 1e-6)


def test_vp_times_from_the_table():
    table = torch.linspace(0.99, 0.01, 10)
    law = VP("epsilon", table)
    close(law.model_time(table[torch.tensor([0, 4, 9])]), [0.0, 4.0, 9.0], 1e-4)
    time, tm = law.sample_training_time(torch.tensor([0.0, 0.5, 0.999]), 0.0, 1.0)
    close(tm, [0.0, 5.0, 9.0])  # ⌊u·10⌋
    close(time, table[torch.tensor([0, 5, 9])])
    _, tm = law.sample_training_time(torch.tensor([0.0, 0.999]), 0.2, 0.5)
    close(tm, [2.0, 4.0])  # [2, 5)
    sch = Schedule(timesteps=torch.tensor([9.0, 4.0]), alphas=torch.tensor([0.1, 0.5, 0.9]))
    close(law.step_dt(sch, torch.tensor([0, 1])), [1.0, 1.0])
    close(law.schedule_times(sch), sch.alphas)
    with pytest.raises(ConfigError, match="alphas_cumprod"):
        VP().sample_training_time(torch.tensor([0.5]), 0.0, 1.0)
    with pytest.raises(ConfigError, match="valid choices: epsilon, sample, v_prediction"):
        VP("x0")


@pytest.mark.parametrize("ptype", ["v_prediction", "sample"])
def test_vp_kernel_step_agrees_across_prediction_types(ptype):
    """The DDIM step of a v- or x0-prediction equals the ε-prediction step on the ε it implies."""
    g = torch.Generator().manual_seed(2)
    x, eps, z = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    sch = Schedule(timesteps=torch.tensor([500.0, 250.0]), alphas=torch.tensor([0.3, 0.6, 0.9]))
    scfg = SamplerConfig(kernel="ddim", eta=1.0)
    law = VP(ptype)
    a = sch.alphas[0]
    x0 = VP("epsilon").x0_from(eps, x, a)
    pred = law.pred_from(x0, eps, a)
    st = law.kernel_step(pred, x, 0, sch, scfg, True, noise=z)
    ref = VP("epsilon").kernel_step(eps, x, 0, sch, scfg, True, noise=z)
    close(st.prev_sample, ref.prev_sample, 1e-5)
    close(st.log_prob, ref.log_prob, 1e-5)
    with pytest.raises(ConfigError, match="valid choices: ddim, ode"):
        law.kernel_step(pred, x, 0, sch, SamplerConfig(kernel="sde"), True)


# -------------------------------------------------------------------------------------------------- EDM
def test_edm_preconditioning_by_hand():
    law = EDM("v", sigma_data=1.0)
    c_skip, c_out, c_in, c_noise = law.preconditioning(torch.tensor([0.0, 1.0, 500.0]))
    close(c_skip, [1.0, 0.5, 1 / 250001])
    close(c_out, [0.0, -1 / math.sqrt(2), -500 / math.sqrt(250001)])
    close(c_in, [1.0, 1 / math.sqrt(2), 1 / math.sqrt(250001)])
    close(c_noise, [0.0, 0.5, math.atan(500) * 2 / math.pi])
    c_skip, c_out, c_in, _ = EDM("v_prediction", sigma_data=0.5).preconditioning(torch.tensor(1.0))
    close(c_skip, 0.2)  # 0.25/1.25
    close(c_out, -0.5 / math.sqrt(1.25))
    close(c_in, 1 / math.sqrt(1.25))
    close(law.model_input(torch.tensor([[2.0]]), 1.0), [[math.sqrt(2)]])
    close(law.model_time(1.0), 0.5)


def test_edm_by_hand():
    law = EDM()
    x = law.interpolate(X0, EPS, 1.0)
    close(x, [[1.0]])  # x0 + σε
    f = law.target(X0, EPS, 1.0)
    close(f, [[-3 / math.sqrt(2)]])  # (ε − σx0)/√(1+σ²) = cos(π/4)ε − sin(π/4)x0 (stable-audio-tools, t = ½)
    close(law.x0_from(f, x, 1.0), X0)  # ½·1 + (−1/√2)(−3/√2) = 2
    close(law.eps_from(f, x, 1.0), EPS)  # ½ − 3/2
    xf, tf = law.flow_state(x, torch.tensor(1.0))
    close(xf, [[0.5]])  # x/(1+σ) = ½·2 + ½·(−1)
    close(tf, 0.5)
    close(law.flow_velocity(f, x, 1.0), [[-3.0]])
    # σ_d ≠ 1: the round trip still holds, at several σ including 0
    law2 = EDM(sigma_data=0.5)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    sig = torch.tensor([0.0, 0.7, 40.0])
    xt = law2.interpolate(x0, eps, sig)
    pred = law2.target(x0, eps, sig)
    close(law2.x0_from(pred, xt, sig), x0, 1e-5)
    close(law2.eps_from(pred, xt, sig)[1:], eps[1:], 1e-5)  # at σ = 0 ε is not identifiable
    with pytest.raises(ConfigError, match="valid choices: v, v_prediction"):
        EDM("epsilon")


def test_edm_times():
    law = EDM()
    time, tm = law.sample_training_time(torch.tensor([0.0, 0.5]), 0.0, 1.0)
    close(time, [0.0, 1.0])  # tan(tπ/2)
    close(tm, [0.0, 0.5])
    close(law.model_time(time), tm)
    sch = Schedule(timesteps=torch.zeros(2), sigmas=torch.tensor([3.0, 1.0, 0.0]))
    close(law.step_dt(sch, torch.tensor([0, 1])), [0.25, 0.5])  # flow times 3/4, 1/2, 0


def test_edm_kernel_step():
    law = EDM()
    g = torch.Generator().manual_seed(4)
    x, f, z, f2 = (torch.randn(2, 6, generator=g) * 3 for _ in range(4))
    sch = Schedule(timesteps=torch.zeros(3), sigmas=torch.tensor([20.0, 3.0, 0.5, 0.0]))
    s, s1 = sch.sigmas[1], sch.sigmas[2]
    # deterministic: the pipeline's first-order DDIM step x' = x̂0 + σ'·ε̂
    ode = law.kernel_step(f, x, 1, sch, SamplerConfig(kernel="sde"), False)
    close(ode.prev_sample, law.x0_from(f, x, s) + s1 * law.eps_from(f, x, s), 1e-5)
    # stochastic: the flow kernel in flow coordinates, mapped back by (1 + σ')
    scfg = SamplerConfig(kernel="sde", noise_level=0.7)
    st = law.kernel_step(f, x, 1, sch, scfg, True, noise=z)
    ref = K.flow_sde_step(law.flow_velocity(f, x, s), x / (1 + s), s / (1 + s), s1 / (1 + s1), 0.7,
                          sigma_for_one=sch.sigmas[1] / (1 + sch.sigmas[1]), noise=z)
    close(st.prev_sample, ref.prev_sample * (1 + s1), 1e-5)
    close(st.std, ref.std * (1 + s1), 1e-5)
    close(st.log_prob, ref.log_prob, 1e-5)
    again = law.kernel_step(f, x, 1, sch, scfg, True, prev_sample=st.prev_sample)
    close(again.log_prob, st.log_prob, 1e-5)
    # the log-prob is the flow-coordinate one: ratios between two policies equal the native Gaussian ratios
    other = law.kernel_step(f2, x, 1, sch, scfg, True, prev_sample=st.prev_sample)
    native = [K.gaussian_log_prob(st.prev_sample, o.mean, o.std) for o in (again, other)]
    close(again.log_prob - other.log_prob, native[0] - native[1], 1e-4)
    cps = SamplerConfig(kernel="cps")
    assert law.last_step_deterministic("cps")
    last = law.kernel_step(f, x, 2, sch, cps, True, noise=z)
    assert last.log_prob is None
    close(last.prev_sample, law.x0_from(f, x, s1), 1e-5)  # σ' = 0: x̂0


def test_edm_ddim_kernel_is_the_pipelines_first_order_step():
    """η = 1 against diffusers' CosineDPMSolverMultistepScheduler.dpm_solver_first_order_update (α = 1, λ = −log σ,
    h = λ' − λ): x' = (σ'/σ)e^{−h}·x + (1 − e^{−2h})·x̂0 + σ'√(1 − e^{−2h})·z, written out here."""
    law = EDM()
    g = torch.Generator().manual_seed(5)
    x, f, z = (torch.randn(2, 6, generator=g) * 2 for _ in range(3))
    sch = Schedule(timesteps=torch.zeros(3), sigmas=torch.tensor([20.0, 3.0, 0.5, 0.0]))
    s, s1 = sch.sigmas[1], sch.sigmas[2]
    x0 = law.x0_from(f, x, s)
    h = -torch.log(s1) + torch.log(s)
    expect = (s1 / s * torch.exp(-h)) * x + (1 - torch.exp(-2 * h)) * x0 + s1 * torch.sqrt(1 - torch.exp(-2 * h)) * z
    scfg = SamplerConfig(kernel="ddim", eta=1.0)
    st = law.kernel_step(f, x, 1, sch, scfg, True, noise=z)
    close(st.prev_sample, expect, 1e-5)
    rho = s1 * math.sqrt(1 - (0.5 / 3) ** 2)
    close(st.std, [rho, rho], 1e-6)
    close(st.log_prob, K.gaussian_log_prob(expect, st.mean, st.std), 1e-5)
    det = law.kernel_step(f, x, 1, sch, scfg, False)  # η = 0: x̂0 + σ'·ε̂, as the flow-coordinate ODE
    close(det.prev_sample, x0 + s1 * law.eps_from(f, x, s), 1e-5)
    close(det.prev_sample, law.kernel_step(f, x, 1, sch, SamplerConfig(kernel="ode"), False).prev_sample, 1e-5)
    last = law.kernel_step(f, x, 2, sch, scfg, True, noise=z)
    assert last.log_prob is None and law.last_step_deterministic("ddim")
    close(last.prev_sample, law.x0_from(f, x, s1), 1e-6)
    assert law.default_kernel == "ddim" and "ddim" in law.kernels


# --------------------------------------------------------------------------------------------- families
def test_families_declare_their_law_without_loading():
    assert MODELS.get("sd3").law_class is RectifiedFlow
    assert MODELS.get("flux").law_class is RectifiedFlow
    assert MODELS.get("sd").law_class is VP
    assert MODELS.get("sdxl").law_class is VP
    for name in ("sd3", "flux", "sd", "sdxl"):
        cls = MODELS.get(name)
        assert cls.kind == cls.law_class.name


def test_loaded_vp_model_law_follows_its_scheduler(tmp_path):
    from genalign.config import ModelConfig
    from genalign.testing import tiny

    path = tiny.build_tiny_sd15(str(tmp_path / "sd_v"), prediction_type="v_prediction")
    gen = MODELS.get("sd").load(ModelConfig(family="sd", path=path, height=32, width=32))
    assert isinstance(gen.law, VP) and gen.law.prediction_type == "v_prediction"
    torch.testing.assert_close(gen.law.alphas_cumprod, gen.pipe.scheduler.alphas_cumprod.float())
