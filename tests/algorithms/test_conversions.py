"""Flow / VP parameterisation conversions (METHODS.md §1): hand-computed values and round trips."""

import math

import pytest
import torch

from genalign.algorithms import conversions as C
from genalign.errors import ConfigError


def test_flow_conversions_hand_computed():
    # x0 = 2, ε = −1, σ = 0.25: x = 0.75·2 + 0.25·(−1) = 1.25; v = ε − x0 = −3
    x0, eps = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    x = C.flow_interpolate(x0, eps, 0.25)
    assert x.item() == pytest.approx(1.25)
    v = C.flow_target(x0, eps)
    assert v.item() == pytest.approx(-3.0)
    assert C.flow_x0_from_v(x, v, 0.25).item() == pytest.approx(2.0)  # 1.25 − 0.25·(−3)
    assert C.flow_eps_from_v(x, v, 0.25).item() == pytest.approx(-1.0)  # 1.25 + 0.75·(−3)
    assert C.flow_v_from_x0(x, x0, 0.25).item() == pytest.approx(-3.0)  # (1.25 − 2)/0.25
    assert C.flow_v_from_eps(x, eps, 0.25).item() == pytest.approx(-3.0)  # (−1 − 1.25)/0.75
    assert C.flow_score_from_v(x, v, 0.25).item() == pytest.approx(4.0)  # −ε/σ = 1/0.25


def test_flow_per_sample_sigma_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    sig = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x = C.flow_interpolate(x0, eps, sig)
    v = C.flow_target(x0, eps)
    torch.testing.assert_close(C.flow_x0_from_v(x, v, sig), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(C.flow_eps_from_v(x, v, sig), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(C.flow_v_from_x0(x, x0, sig), v, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(C.flow_v_from_eps(x, eps, sig), v, atol=1e-4, rtol=1e-4)


def test_vp_conversions_hand_computed():
    # ᾱ = 0.64 → α = 0.8, σ = 0.6; x0 = 1, ε = 2 → x = 0.8 + 1.2 = 2.0; v = αε − σx0 = 1.6 − 0.6 = 1.0
    a, s = C.vp_alpha_sigma(0.64)
    assert a.item() == pytest.approx(0.8) and s.item() == pytest.approx(0.6)
    x0, eps = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    x = C.vp_interpolate(x0, eps, a, s)
    assert x.item() == pytest.approx(2.0)
    v = C.vp_target(x0, eps, a, s, "v_prediction")
    assert v.item() == pytest.approx(1.0)
    # from ε: x̂0 = (2 − 0.6·2)/0.8 = 1
    x0h, epsh = C.vp_pred_to_x0_eps(eps, x, a, s, "epsilon")
    assert (x0h.item(), epsh.item()) == (pytest.approx(1.0), pytest.approx(2.0))
    # from v: x̂0 = 0.8·2 − 0.6·1 = 1, ε̂ = 0.6·2 + 0.8·1 = 2
    x0h, epsh = C.vp_pred_to_x0_eps(v, x, a, s, "v_prediction")
    assert (x0h.item(), epsh.item()) == (pytest.approx(1.0), pytest.approx(2.0))
    # from x0: ε̂ = (2 − 0.8·1)/0.6 = 2
    x0h, epsh = C.vp_pred_to_x0_eps(x0, x, a, s, "sample")
    assert (x0h.item(), epsh.item()) == (pytest.approx(1.0), pytest.approx(2.0))


@pytest.mark.parametrize("src", C.PREDICTION_TYPES)
@pytest.mark.parametrize("dst", C.PREDICTION_TYPES)
def test_vp_prediction_round_trips(src, dst):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    ab = torch.tensor([0.9, 0.5, 0.1])
    a, s = C.vp_alpha_sigma(ab)
    x = C.vp_interpolate(x0, eps, a, s)
    p_src = C.vp_target(x0, eps, a, s, src)
    p_dst = C.vp_convert_prediction(p_src, x, a, s, src, dst)
    torch.testing.assert_close(p_dst, C.vp_target(x0, eps, a, s, dst), atol=1e-4, rtol=1e-4)
    back = C.vp_convert_prediction(p_dst, x, a, s, dst, src)
    torch.testing.assert_close(back, p_src, atol=1e-4, rtol=1e-4)


def test_unknown_prediction_type_is_config_error():
    with pytest.raises(ConfigError, match="epsilon"):
        C.vp_pred_to_x0_eps(torch.zeros(1, 1), torch.zeros(1, 1), 0.5, 0.5, "eps")


def test_flow_vp_same_snr_hand_computed():
    # σ = 0.5 → c = √(0.25 + 0.25) = √½, ᾱ = 0.25/0.5 = 0.5, x_VP = x_flow·√2
    x = torch.tensor([[1.0, -2.0]])
    x_vp, ab = C.flow_to_vp(x, 0.5)
    assert ab.item() == pytest.approx(0.5)
    torch.testing.assert_close(x_vp, x * math.sqrt(2))
    # σ = 0.2 → c = √(0.64 + 0.04) = √0.68; ᾱ = 0.64/0.68
    _, ab = C.flow_to_vp(x, 0.2)
    assert ab.item() == pytest.approx(0.64 / 0.68)
    x_back, sig = C.vp_to_flow(*C.flow_to_vp(x, 0.2))
    assert sig.item() == pytest.approx(0.2, abs=1e-6)
    torch.testing.assert_close(x_back, x)
    # same SNR: log-SNR of the VP state equals the flow one
    assert (torch.log(ab / (1 - ab))).item() == pytest.approx(C.logsnr_flow(0.2).item(), abs=1e-5)


def test_velocity_vp_prediction_mapping_round_trip():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sig = torch.tensor([0.3, 0.8])
    x_flow = C.flow_interpolate(x0, eps, sig)
    v = C.flow_target(x0, eps)
    x_vp, ab = C.flow_to_vp(x_flow, sig)
    a, s = C.vp_alpha_sigma(ab)
    torch.testing.assert_close(x_vp, C.vp_interpolate(x0, eps, a, s), atol=1e-5, rtol=1e-5)
    for ptype in C.PREDICTION_TYPES:
        pred = C.flow_velocity_to_vp_pred(v, x_flow, sig, ptype)
        torch.testing.assert_close(pred, C.vp_target(x0, eps, a, s, ptype), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(C.vp_pred_to_flow_velocity(pred, x_vp, ab, ptype), v, atol=1e-4, rtol=1e-4)


def test_vp_timestep_for_alpha_bar():
    ac = torch.tensor([0.99, 0.9, 0.5, 0.1, 0.01])
    assert C.vp_timestep_for_alpha_bar(ac, 0.5).item() == pytest.approx(2.0)
    t = C.vp_timestep_for_alpha_bar(ac, torch.tensor([0.9, 0.3, 0.999, 0.001]))
    assert t[0].item() == pytest.approx(1.0)
    assert 2.0 < t[1].item() < 3.0
    assert t[2].item() == pytest.approx(0.0) and t[3].item() == pytest.approx(4.0)


def test_half_precision_promoted_to_fp32_and_fp64_kept():
    x = torch.ones(2, 3, dtype=torch.bfloat16)
    assert C.flow_x0_from_v(x, x, 0.5).dtype == torch.float32
    xd = torch.ones(2, 3, dtype=torch.float64)
    assert C.flow_x0_from_v(xd, xd, torch.tensor([0.1, 0.2], dtype=torch.float64)).dtype == torch.float64
