"""DiffusionNFT loss (METHODS.md §4): hand-computed values, affinity in r, neutral r = ½, descent at r = 1."""

import pytest
import torch

from genalign.algorithms import conversions as C
from genalign.algorithms.nft import (
    ema_update_,
    nft_loss,
    nft_loss_vp,
    nft_optimality,
    old_policy_decay,
)
from genalign.errors import ConfigError


def test_optimality_mapping():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0, float("nan")])
    r = nft_optimality(a, adv_clip_max=5.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0, 0.5]))
    with pytest.raises(ConfigError):
        nft_optimality(a, adv_clip_max=0.0)


def _hand_case():
    # one sample, D = 2; t = 0.5, β = 0.5
    x0 = torch.tensor([[0.0, 0.0]])
    x_t = torch.tensor([[1.0, 1.0]])
    v_theta = torch.tensor([[2.0, 0.0]], requires_grad=True)
    v_old = torch.tensor([[0.0, 2.0]])
    return v_theta, v_old, x0, x_t


def test_nft_loss_hand_computed():
    v_theta, v_old, x0, x_t = _hand_case()
    # v⁺ = 0.5·[2,0] + 0.5·[0,2] = [1,1];  x̂0⁺ = [1,1] − 0.5·[1,1] = [0.5,0.5]
    #   mean sq = 0.25, mean abs = 0.5 → ℓ⁺ = 0.5
    # v⁻ = 1.5·[0,2] − 0.5·[2,0] = [−1,3]; x̂0⁻ = [1,1] − 0.5·[−1,3] = [1.5,−0.5]
    #   mean sq = (2.25 + 0.25)/2 = 1.25, mean abs = 1.0 → ℓ⁻ = 1.25
    # r = 0.25: (0.25·0.5 + 0.75·1.25)/0.5 = 2.125; × A_max 5 = 10.625
    # ref: v_ref = [2,2] → mean (v_θ − v_ref)² = (0 + 4)/2 = 2; λ = 0.1 → +0.2
    loss, stats = nft_loss(
        v_theta, v_old, x0, x_t, 0.5, torch.tensor([0.25]), beta=0.5, adv_clip_max=5.0,
        v_ref=torch.tensor([[2.0, 2.0]]), ref_weight=0.1,
    )
    assert loss.item() == pytest.approx(10.825, rel=1e-6)
    assert stats["policy_loss"].item() == pytest.approx(10.625, rel=1e-6)
    assert stats["loss_pos"].item() == pytest.approx(0.5)
    assert stats["loss_neg"].item() == pytest.approx(1.25)
    assert stats["kl_loss"].item() == pytest.approx(2.0)
    assert stats["weight_pos"].item() == pytest.approx(0.5)
    assert stats["weight_neg"].item() == pytest.approx(1.0)
    # v_θ's own x̂0 = [1,1] − 0.5·[2,0] = [0,1] → mse 0.5
    assert stats["x0_mse"].item() == pytest.approx(0.5)
    assert loss.dtype == torch.float32


def test_nft_gradient_hand_computed():
    # ∂ℓ⁺/∂v_θ = (2/D)·e⁺/w⁺·(−tβ) with e⁺ = [0.5,0.5], w⁺ = 0.5, D = 2, tβ = 0.25  → [−0.25,−0.25]
    # ∂ℓ⁻/∂v_θ = (2/D)·e⁻/w⁻·(+tβ) with e⁻ = [1.5,−0.5], w⁻ = 1       → [0.375,−0.125]
    # r = 1: ∂L = 5/0.5 · ∂ℓ⁺ = [−2.5,−2.5];  r = 0: ∂L = 10 · ∂ℓ⁻ = [3.75,−1.25]
    for r, expected in ((1.0, [-2.5, -2.5]), (0.0, [3.75, -1.25])):
        v_theta, v_old, x0, x_t = _hand_case()
        loss, _ = nft_loss(v_theta, v_old, x0, x_t, 0.5, torch.tensor([r]), beta=0.5)
        loss.backward()
        torch.testing.assert_close(v_theta.grad, torch.tensor([expected]))


def _random_batch(n=4, shape=(3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g)
    eps = torch.randn(n, *shape, generator=g)
    t = torch.rand(n, generator=g) * 0.8 + 0.1
    x_t = C.flow_interpolate(x0, eps, t)
    v_old = C.flow_target(x0, eps) + 0.5 * torch.randn(n, *shape, generator=g)
    v_theta = v_old + 0.3 * torch.randn(n, *shape, generator=g)
    return x0, x_t, t, v_old, v_theta


def test_loss_is_affine_in_r():
    x0, x_t, t, v_old, v_theta = _random_batch()
    g = torch.Generator().manual_seed(3)
    rs = [torch.rand(4, generator=g) for _ in range(3)]
    alpha = torch.tensor([0.2, 0.5, 0.3])
    losses = [nft_loss(v_theta, v_old, x0, x_t, t, r, beta=0.7)[0] for r in rs]
    r_mix = sum(a * r for a, r in zip(alpha, rs))
    mixed = nft_loss(v_theta, v_old, x0, x_t, t, r_mix, beta=0.7)[0]
    assert mixed.item() == pytest.approx(sum(a * l for a, l in zip(alpha, losses)).item(), rel=1e-6)


def test_neutral_r_gives_zero_gradient_at_old_policy():
    x0, x_t, t, v_old, _ = _random_batch()
    v_theta = v_old.clone().requires_grad_(True)
    loss, _ = nft_loss(v_theta, v_old, x0, x_t, t, torch.full((4,), 0.5), beta=1.0)
    loss.backward()
    assert v_theta.grad.abs().max().item() < 1e-6
    # and not zero away from r = ½ (the test could fail)
    v_theta.grad = None
    loss, _ = nft_loss(v_theta, v_old, x0, x_t, t, torch.full((4,), 0.9), beta=1.0)
    loss.backward()
    assert v_theta.grad.abs().max().item() > 1e-3


def test_r_one_moves_towards_clean_target():
    x0, x_t, t, v_old, v_theta0 = _random_batch(seed=5)
    v_theta = v_theta0.clone().requires_grad_(True)
    tt = t.reshape(-1, 1, 1, 1)

    def err():
        return ((x_t - tt * v_theta - x0) ** 2).mean().item()

    before = err()
    loss, _ = nft_loss(v_theta, v_old, x0, x_t, t, torch.ones(4), beta=1.0)
    loss.backward()
    with torch.no_grad():
        v_theta -= 1e-3 * v_theta.grad
    assert err() < before
    # r = 0 pushes away from the positive target along the implicit negative: the error grows
    v_theta = v_theta0.clone().requires_grad_(True)
    loss, _ = nft_loss(v_theta, v_old, x0, x_t, t, torch.zeros(4), beta=1.0)
    loss.backward()
    with torch.no_grad():
        v_theta -= 1e-3 * v_theta.grad
    assert err() > before


def test_reference_term_gradient():
    x0, x_t, t, v_old, _ = _random_batch()
    v_theta = v_old.clone().requires_grad_(True)
    v_ref = v_old + 1.0
    loss, stats = nft_loss(v_theta, v_old, x0, x_t, t, torch.full((4,), 0.5), 1.0, v_ref=v_ref, ref_weight=0.5)
    loss.backward()
    # policy gradient is zero here; the ref term gives λ·2(v_θ − v_ref)/(N·D) = 0.5·2·(−1)/(4·48)
    torch.testing.assert_close(v_theta.grad, torch.full_like(v_theta, -1.0 / 192), atol=1e-6, rtol=1e-4)
    assert stats["kl_loss"].item() == pytest.approx(1.0)


def test_vp_variant_matches_flow_loss_at_same_snr():
    g = torch.Generator().manual_seed(7)
    n, shape = 3, (2, 3, 3)
    x0, eps = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    ab = torch.tensor([0.9, 0.5, 0.2])
    a, s = C.vp_alpha_sigma(ab)
    x_vp = C.vp_interpolate(x0, eps, a, s)
    eps_old = eps + 0.3 * torch.randn(n, *shape, generator=g)
    eps_theta = (eps_old + 0.2 * torch.randn(n, *shape, generator=g)).requires_grad_(True)
    r = torch.tensor([0.1, 0.6, 0.9])
    loss_vp, _ = nft_loss_vp(eps_theta, eps_old, x0, x_vp, ab, r, beta=0.5, prediction_type="epsilon")
    # by hand: flow time t = σ/(α+σ), x_flow = x_vp/(α+σ), v = ε̂ − x̂0 with x̂0 = (x − σε̂)/α
    b = lambda z: z.reshape(-1, 1, 1, 1)  # noqa: E731
    t_f = s / (a + s)
    x_f = x_vp / b(a + s)
    to_v = lambda e: e - (x_vp - b(s) * e) / b(a)  # noqa: E731
    loss_flow, _ = nft_loss(to_v(eps_theta), to_v(eps_old), x0, x_f, t_f, r, beta=0.5)
    assert loss_vp.item() == pytest.approx(loss_flow.item(), rel=1e-5)
    # the x̂0 errors are those of the native predictions, mixed affinely: check ℓ⁺ at r = 1 directly
    x0_th = (x_vp - b(s) * eps_theta) / b(a)
    x0_old = (x_vp - b(s) * eps_old) / b(a)
    e = 0.5 * x0_th + 0.5 * x0_old - x0
    l_pos = (e**2).mean(dim=(1, 2, 3)) / e.abs().mean(dim=(1, 2, 3))
    loss_r1, _ = nft_loss_vp(eps_theta, eps_old, x0, x_vp, ab, torch.ones(3), beta=0.5)
    assert loss_r1.item() == pytest.approx((5.0 * l_pos / 0.5).mean().item(), rel=1e-5)
    # r = 1 step on ε_θ reduces the x̂0 error of the model
    loss_r1.backward()
    with torch.no_grad():
        before = ((x0_th - x0) ** 2).mean()
        eps_new = eps_theta - 1e-3 * eps_theta.grad
        after = (((x_vp - b(s) * eps_new) / b(a) - x0) ** 2).mean()
    assert after < before


@pytest.mark.parametrize("ptype", ["v_prediction", "sample"])
def test_vp_variant_other_prediction_types_agree_with_epsilon(ptype):
    g = torch.Generator().manual_seed(8)
    n, shape = 2, (2, 2, 2)
    x0, eps = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    ab = torch.tensor([0.7, 0.3])
    a, s = C.vp_alpha_sigma(ab)
    x_vp = C.vp_interpolate(x0, eps, a, s)
    e_old, e_th = eps + 0.2, eps - 0.1
    r = torch.tensor([0.3, 0.8])
    ref, _ = nft_loss_vp(e_th, e_old, x0, x_vp, ab, r, 0.5, "epsilon")
    conv = lambda e: C.vp_convert_prediction(e, x_vp, a, s, "epsilon", ptype)  # noqa: E731
    other, _ = nft_loss_vp(conv(e_th), conv(e_old), x0, x_vp, ab, r, 0.5, ptype)
    assert other.item() == pytest.approx(ref.item(), rel=1e-4)


def test_vp_kl_space_options():
    x0 = torch.zeros(1, 1, 2, 2)
    x_vp = torch.ones(1, 1, 2, 2)
    pred, ref = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    r = torch.tensor([0.5])
    base, _ = nft_loss_vp(pred, pred, x0, x_vp, 0.64, r, 1.0, pred_ref=None)
    _, st = nft_loss_vp(pred, pred, x0, x_vp, 0.64, r, 1.0, pred_ref=ref, ref_weight=1.0, kl_space="native")
    assert st["kl_loss"].item() == pytest.approx(1.0)
    # flow: v = ε̂ − x̂0 = ε̂ − (x − σε̂)/α → Δv = Δε·(1 + σ/α) = 1 + 0.6/0.8 = 1.75 → 3.0625
    _, st = nft_loss_vp(pred, pred, x0, x_vp, 0.64, r, 1.0, pred_ref=ref, ref_weight=1.0, kl_space="flow")
    assert st["kl_loss"].item() == pytest.approx(3.0625, rel=1e-5)
    with pytest.raises(ConfigError, match="native"):
        nft_loss_vp(pred, pred, x0, x_vp, 0.64, r, 1.0, kl_space="bogus")
    assert base.item() >= 0


def test_old_policy_decay_schedules():
    assert old_policy_decay(0, 0) == 0.0 and old_policy_decay(1000, 0) == 0.0
    assert old_policy_decay(0, 1) == 0.0
    assert old_policy_decay(100, 1) == pytest.approx(0.1)
    assert old_policy_decay(499, 1) == pytest.approx(0.499)
    assert old_policy_decay(5000, 1) == 0.5
    assert old_policy_decay(74, 2) == 0.0
    assert old_policy_decay(75, 2) == 0.0
    assert old_policy_decay(175, 2) == pytest.approx(0.75)
    assert old_policy_decay(10_000, 2) == 0.999
    with pytest.raises(ConfigError, match="0, 1, 2"):
        old_policy_decay(10, 3)


def test_ema_update_in_place():
    old = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    new = [torch.tensor([3.0, 6.0]), torch.tensor([[4.0]])]
    ids = [id(o) for o in old]
    ema_update_(old, new, 0.25)  # 0.25·old + 0.75·new
    torch.testing.assert_close(old[0], torch.tensor([2.5, 5.0]))
    torch.testing.assert_close(old[1], torch.tensor([[3.0]]))
    assert [id(o) for o in old] == ids
    ema_update_(old, new, 1.0)  # unchanged
    torch.testing.assert_close(old[0], torch.tensor([2.5, 5.0]))
    ema_update_(old, new, 0.0)  # copy
    torch.testing.assert_close(old[0], new[0])
    with pytest.raises(ValueError):
        ema_update_(old, new[:1], 0.5)
    with pytest.raises(ConfigError):
        ema_update_(old, new, 1.5)
