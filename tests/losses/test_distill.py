"""Pure distillation maths (METHODS.md §8–§10): hand-computed values, autograd checks, bad-input errors."""

import math

import pytest
import torch

from genalign.errors import ConfigError
from genalign.losses import distill as D
from genalign.models.steps import flow_cps_step

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # these tensors are tiny: on a shared, loaded CPU two OpenMP threads only spin (GANHead training 0.2 s vs 12 s)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def t64(x):
    return torch.tensor(x, dtype=F64)


# ============================================================================================== DMD / DMD2
# sample 0: x = [1, 3], x̂_real = [0, 1] → mean|x − x̂_real| = (1 + 2)/2 = 1.5; x̂_fake − x̂_real = [0.3, 0.6] → g = [0.2, 0.4]
# sample 1: x = [2, 2], x̂_real = [2, 4] → mean|·| = (0 + 2)/2 = 1;   x̂_fake − x̂_real = [−1, 1]  → g = [−1, 1]
X, REAL, FAKE = [[1.0, 3.0], [2.0, 2.0]], [[0.0, 1.0], [2.0, 4.0]], [[0.3, 1.6], [1.0, 5.0]]
G = [[0.2, 0.4], [-1.0, 1.0]]


def test_dmd_gradient_hand_computed():
    g = D.dmd_gradient(t64(X), t64(REAL), t64(FAKE))
    torch.testing.assert_close(g, t64(G))
    assert g.dtype == F64 and not g.requires_grad  # formed in float64 without grad, as the reference


def test_dmd_loss_value_and_gradient_is_g_over_numel():
    x = t64(X).requires_grad_(True)
    loss, g = D.dmd_loss(x, t64(REAL), t64(FAKE))
    # L = ½·mean(g²) = ½·(0.04 + 0.16 + 1 + 1)/4 = 0.275
    assert loss.item() == pytest.approx(0.275)
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, t64(G) / 4)  # ∂L/∂x = g/numel = [[0.05, 0.1], [−0.25, 0.25]]


def test_dmd_loss_gradient_random_float32_and_chain_rule():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, 2, 2, generator=gen, requires_grad=True)
    x = 2 * theta  # the student's output depends on parameters
    real, fake = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    loss, g = D.dmd_loss(x, real, fake)
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(grad, 2 * g.float() / x.numel(), rtol=1e-5, atol=1e-7)
    # the teacher / fake predictions never receive gradient
    real.requires_grad_(True)
    loss2, _ = D.dmd_loss(x, real, fake)
    assert torch.autograd.grad(loss2, real, allow_unused=True)[0] is None


def test_dmd_normaliser_zero_reference_vs_guard():
    # x̂_real ≡ x: normaliser 0; x̂_fake − x̂_real = [1, 0] → [inf, nan] → nan_to_num → [max float64, 0]
    x = t64([[1.0, 2.0]])
    g_ref = D.dmd_gradient(x, x.clone(), t64([[2.0, 2.0]]))
    assert g_ref[0, 0].item() == torch.finfo(F64).max and g_ref[0, 1].item() == 0.0
    g_guard = D.dmd_gradient(x, x.clone(), t64([[2.0, 2.0]]), normaliser_eps=1e-3)  # 1/1e-3 = 1000
    torch.testing.assert_close(g_guard, t64([[1000.0, 0.0]]))
    with pytest.raises(ValueError, match="normaliser_eps"):
        D.dmd_gradient(x, x, x, normaliser_eps=-1)


def test_surrogate_loss_any_gradient():
    x = t64([[1.0, -2.0, 0.5]]).requires_grad_(True)
    g = t64([[3.0, 0.0, -6.0]])
    loss = D.surrogate_loss(x, g)
    assert loss.item() == pytest.approx(0.5 * (9 + 0 + 36) / 3)  # 7.5
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], g / 3)


def test_shape_mismatch_one_line_errors():
    with pytest.raises(ValueError, match=r"shape mismatch: x \(2, 2\), x0_real \(2, 3\)") as e:
        D.dmd_loss(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, 2))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="shape mismatch"):
        D.fake_score_loss(torch.zeros(2, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\)"):
        D.fake_score_loss(torch.zeros(2, 2), torch.zeros(2, 2), weight=torch.ones(3))
    with pytest.raises(ValueError, match="shape mismatch"):
        D.regression_loss(torch.zeros(1, 2), torch.zeros(1, 3))


def test_to_x0_flow_and_vp_hand_computed():
    # flow: x = 1.25, v = −3, σ = 0.25 → x̂0 = 1.25 + 0.75 = 2
    assert D.to_x0(torch.tensor([[-3.0]]), torch.tensor([[1.25]]), "flow", sigma=0.25).item() == pytest.approx(2.0)
    # VP ε: α = 0.8, σ = 0.6, x = 2, ε̂ = 2 → (2 − 1.2)/0.8 = 1; v-pred v̂ = 1 → 0.8·2 − 0.6·1 = 1
    x = torch.tensor([[2.0]])
    assert D.to_x0(torch.tensor([[2.0]]), x, "epsilon", sigma=0.6, alpha=0.8).item() == pytest.approx(1.0)
    assert D.to_x0(torch.tensor([[1.0]]), x, "v_prediction", sigma=0.6, alpha=0.8).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="valid: epsilon, flow, sample, v_prediction"):
        D.to_x0(x, x, "edm", sigma=0.5)
    with pytest.raises(ValueError, match="needs sigma and alpha"):
        D.to_x0(x, x, "epsilon", sigma=0.5)


def test_fake_score_loss_hand_computed_and_gradient():
    # per-sample mean squared errors: [(1 + 0)/2, (0 + 4)/2] = [0.5, 2] → mean 1.25; weighted [2, 0.5] → [1, 1] → 1
    pred = t64([[1.0, 2.0], [3.0, 4.0]]).requires_grad_(True)
    target = t64([[0.0, 2.0], [3.0, 2.0]]).requires_grad_(True)
    assert D.fake_score_loss(pred, target).item() == pytest.approx(1.25)
    loss = D.fake_score_loss(pred, target, weight=t64([2.0, 0.5]))
    assert loss.item() == pytest.approx(1.0)
    gp, gt = torch.autograd.grad(loss, [pred, target], allow_unused=True)
    # ∂/∂pred = w_i·2(p − t)/(N·D): [2·2·[1, 0]/4, 0.5·2·[0, 2]/4] = [[1, 0], [0, 0.5]]
    torch.testing.assert_close(gp, t64([[1.0, 0.0], [0.0, 0.5]]))
    assert gt is None  # the target is a constant


def test_fake_score_target():
    x0, eps = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    assert D.fake_score_target(x0, eps, "flow").item() == pytest.approx(1.0)  # ε − x0
    assert D.fake_score_target(x0, eps, "epsilon", sigma=0.6, alpha=0.8).item() == pytest.approx(2.0)
    assert D.fake_score_target(x0, eps, "v_prediction", sigma=0.6, alpha=0.8).item() == pytest.approx(1.0)  # 1.6 − 0.6
    with pytest.raises(ConfigError, match="valid: epsilon, flow, sample, v_prediction"):
        D.fake_score_target(x0, eps, "eps")


def test_timestep_samplers():
    g = torch.Generator().manual_seed(0)
    t = D.sample_dmd_timesteps(4000, g)  # U{20..980}
    assert t.min().item() == 20 and t.max().item() == 980
    t = D.sample_dmd_timesteps(200, g, min_frac=0.2, max_frac=0.3, num_train_timesteps=10)  # {2, 3}
    assert set(t.tolist()) == {2, 3}
    with pytest.raises(ValueError, match="empty timestep range"):
        D.sample_dmd_timesteps(1, g, min_frac=0.5, max_frac=0.1)
    assert torch.all(D.sample_logit_normal_sigma(5, g, std=0.0) == 0.5)  # sigmoid(0)
    s = D.sample_logit_normal_sigma(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(s, torch.sigmoid(torch.randn(3, generator=torch.Generator().manual_seed(1))))


# --------------------------------------------------------------------------------------------------- GAN
def test_gan_losses_hand_computed_and_gradient():
    z = torch.zeros(1)
    assert D.gan_discriminator_loss(z, z).item() == pytest.approx(2 * math.log(2))  # softplus(0) twice
    lf = torch.tensor([math.log(3.0)], requires_grad=True)
    assert D.gan_discriminator_loss(z, lf).item() == pytest.approx(math.log(4) + math.log(2))  # softplus(ln 3) = ln 4
    loss = D.gan_generator_loss(lf)
    assert loss.item() == pytest.approx(math.log(4 / 3))  # softplus(−ln 3) = ln(1 + 1/3)
    assert torch.autograd.grad(loss, lf)[0].item() == pytest.approx(-0.25)  # −sigmoid(−ln 3) = −1/4


def test_gan_head_shapes_training_and_errors():
    torch.manual_seed(0)
    head = D.GANHead(8, hidden=16, num_down=2)
    assert head(torch.randn(3, 8, 8, 8)).shape == (3,)
    tokens = D.GANHead(8, kind="tokens", hidden=16)
    out = tokens(torch.randn(3, 5, 8))  # token sequence (N, L, C)
    assert out.shape == (3,)
    out.sum().backward()
    assert all(p.grad is not None for p in tokens.parameters())  # every parameter is used (DDP)
    # it can separate two feature distributions with the DMD2 losses
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    real, fake = torch.randn(8, 8, 4, 4) + 1.0, torch.randn(8, 8, 4, 4) - 1.0
    first = D.gan_discriminator_loss(head(real), head(fake)).item()
    for _ in range(30):
        opt.zero_grad()
        loss = D.gan_discriminator_loss(head(real), head(fake))
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert all(p.grad is not None for p in head.parameters())
    with pytest.raises(ValueError, match="expects 8 channels"):
        head(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="needs H, W >= 4"):
        head(torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match=r"kind='conv'\) takes \(N, C, H, W\)"):
        head(torch.randn(2, 5, 8))
    with pytest.raises(ConfigError, match="valid: conv, tokens"):
        D.GANHead(8, kind="mlp")


# ------------------------------------------------------------------------------------ backward simulation
def test_dmd2_student_timesteps():
    assert D.dmd2_student_timesteps(4) == (999, 749, 499, 249) == D.DMD2_STUDENT_TIMESTEPS["4step"]
    assert D.dmd2_student_timesteps(1) == (999,) == D.DMD2_STUDENT_TIMESTEPS["1step"]
    assert D.dmd2_student_timesteps(2) == (999, 499)
    assert D.DMD2_STUDENT_TIMESTEPS["sdxl_1step"] == (399,)
    with pytest.raises(ValueError, match="num_steps"):
        D.dmd2_student_timesteps(0)


def test_backward_simulation_plan():
    ts = (999, 749, 499, 249)
    p = D.backward_simulation_plan(ts, k=2)
    assert p.sim_steps == ((999, 749), (749, 499)) and p.train_timestep == 499 and not p.from_pure_noise
    p0 = D.backward_simulation_plan(ts, k=0)
    assert p0.sim_steps == () and p0.train_timestep == 999 and p0.from_pure_noise
    # seeded: the same seed gives the same k on every rank; over seeds every k in 0..3 appears
    ks = [D.backward_simulation_plan(ts, generator=torch.Generator().manual_seed(s)).k for s in range(40)]
    assert ks == [D.backward_simulation_plan(ts, generator=torch.Generator().manual_seed(s)).k for s in range(40)]
    assert set(ks) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="strictly decreasing"):
        D.backward_simulation_plan((249, 499))
    with pytest.raises(ValueError, match=r"k must be in \[0, 3\]"):
        D.backward_simulation_plan(ts, k=4)


def test_run_backward_simulation_hand_computed():
    w = torch.tensor(1.0, requires_grad=True)  # a "parameter": no graph may be built
    calls = []

    def predict_x0(x, t):
        calls.append(t)
        return w * x + t

    def renoise(x0, t):
        return x0 - t

    # k = 2: x = 0 → x̂0 = 999 → renoise to 749: 250 → x̂0 = 250 + 749 = 999 → renoise to 499: 500
    x, t = D.run_backward_simulation(D.backward_simulation_plan((999, 749, 499, 249), k=2), torch.zeros(1),
                                     predict_x0, renoise)
    assert x.item() == 500.0 and t == 499 and calls == [999, 749] and not x.requires_grad


# ---------------------------------------------------------------------------------------- DMD v1 regression
def test_regression_loss_hand_computed():
    s, y = t64([[1.0, 2.0]]).requires_grad_(True), t64([[0.0, 0.0]])
    assert D.regression_loss(s, y, "mse").item() == pytest.approx(2.5)  # (1 + 4)/2
    loss = D.regression_loss(s, y, "pseudo_huber", c=1.0)  # √(5 + 1) − 1
    assert loss.item() == pytest.approx(math.sqrt(6) - 1)
    torch.testing.assert_close(torch.autograd.grad(loss, s)[0], t64([[1.0, 2.0]]) / math.sqrt(6))  # (x − y)/√(‖·‖² + c²)
    assert D.pseudo_huber_c(3072) == pytest.approx(0.02993, abs=1e-5)  # 0.00054·√3072: iCT's CIFAR value ≈ 0.03
    c2 = 0.00054 * math.sqrt(2)  # default c for d = 2
    assert D.regression_loss(s, y).item() == pytest.approx(math.sqrt(5 + c2**2) - c2)
    with pytest.raises(ConfigError, match="valid: mse, pseudo_huber"):
        D.regression_loss(s, y, "lpips")


# ================================================================================================== RTDMD
# s = 0.5, t = 0.75: a = 0.25/0.5 = 0.5; σ_ts² = 0.75² − 0.5²·0.5² = 0.5625 − 0.0625 = 0.5
def test_subinterval_coefficients_and_renoise():
    a, sig = D.subinterval_coefficients(0.5, 0.75)
    assert a.item() == pytest.approx(0.5) and sig.item() == pytest.approx(math.sqrt(0.5))
    # composing with x_s = (1−s)x0 + sε gives the flow marginal at t: signal (1−t), noise variance t²
    assert (a * 0.5).item() == pytest.approx(0.25) and ((a * 0.5) ** 2 + sig**2).item() == pytest.approx(0.5625)
    x_t = D.subinterval_renoise(torch.tensor([[2.0]]), 0.5, 0.75, torch.tensor([[1.0]]))
    assert x_t.item() == pytest.approx(1.0 + math.sqrt(0.5))  # 0.5·2 + √0.5·1
    with pytest.raises(ValueError, match="sigma_s < 1 and sigma_t >= sigma_s"):
        D.subinterval_coefficients(0.5, 0.25)


def test_ac_fake_target_hand_computed_and_reduces_to_flow_target():
    # −x_s/(1−s) + [(t + (1−t)s²/(1−s)²)/σ_ts]·ξ = −2·2 + [(0.75 + 0.25)/√0.5]·1 = −4 + √2
    v = D.ac_fake_target(torch.tensor([[2.0]]), 0.5, 0.75, torch.tensor([[1.0]]))
    assert v.item() == pytest.approx(-4 + math.sqrt(2), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x0, xi = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    torch.testing.assert_close(D.ac_fake_target(x0, torch.zeros(4), t, xi), xi - x0)  # s = 0 → ξ − x0
    # and the renoised state is then the ordinary flow interpolation
    torch.testing.assert_close(D.subinterval_renoise(x0, torch.zeros(4), t, xi),
                               (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * xi)


def test_ac_fake_weight_and_loss_hand_computed():
    assert D.ac_fake_weight(0.5, 0.75).item() == pytest.approx(2.0)  # 1/σ_ts² = 1/0.5
    assert D.ac_fake_weight(0.0, 0.2).item() == pytest.approx(10.0)  # 1/0.04 = 25 → clamp 10
    # s = 0, t = 0.2, x_s = 1, ξ = 0: v* = −1; v_φ = 0 → ‖v_φ − v*‖² = 1
    v = torch.zeros(1, 1, dtype=F64, requires_grad=True)
    loss = D.ac_fake_loss(v, t64([[1.0]]), 0.0, 0.2, t64([[0.0]]))
    assert loss.item() == pytest.approx(0.4)  # min(1, 10·0.04)·1 = 10·0.04·1
    assert torch.autograd.grad(loss, v)[0].item() == pytest.approx(0.8)  # 0.4·2(v − v*) = 0.8·(0 − (−1))
    assert D.ac_fake_loss(v, t64([[1.0]]), 0.0, 0.2, t64([[0.0]]), move_scale_out=False).item() == pytest.approx(1.0)
    # s = 0.5, t = 0.75: w·σ² = 2·0.5 = 1 → plain ‖0 − (−4 + √2)‖²
    loss = D.ac_fake_loss(torch.zeros(1, 1), torch.tensor([[2.0]]), 0.5, 0.75, torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx((4 - math.sqrt(2)) ** 2, rel=1e-5)


def test_sample_ac_timesteps():
    t_s = torch.tensor([0.0, 250.0, 975.0])
    t = D.sample_ac_timesteps(t_s, torch.Generator().manual_seed(3))
    u = torch.rand(3, generator=torch.Generator().manual_seed(3))
    # ranges [10, 1000], [260, 1000], [985, 1000] then clamped to [20, 980]
    expected = torch.clamp(torch.tensor([10.0, 260.0, 985.0]) + u * torch.tensor([990.0, 740.0, 15.0]), 20, 980)
    torch.testing.assert_close(t, expected)
    assert t[2].item() == 980.0
    many = D.sample_ac_timesteps(torch.full((2000,), 500.0), torch.Generator().manual_seed(0))
    assert many.min().item() >= 510 and many.max().item() <= 980


def test_ac_dmd_loss_with_shared_cps_noise():
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    x_t = D.subinterval_renoise(x_s.detach(), 0.25, 0.6, torch.randn(2, 3, 2, 2, generator=g))
    v_real, v_fake, xi2 = (torch.randn(2, 3, 2, 2, generator=g) for _ in range(3))
    step = lambda v: flow_cps_step(v, x_t, 0.6, 0.25, 0.9, noise=xi2).prev_sample  # noqa: E731
    # identical predictions + the same ξ′ → identical boundary states → g = 0
    loss, gr = D.ac_dmd_loss(x_s, step(v_real), step(v_real))
    assert loss.item() == 0.0 and torch.all(gr == 0)
    # different predictions: the CPS-stepped difference is (1−σ_s)(x̂0 diff) + σ_s cos(aπ/2)(ε̂ diff), still g/numel
    loss, gr = D.ac_dmd_loss(x_s, step(v_real), step(v_fake))
    torch.testing.assert_close(torch.autograd.grad(loss, x_s)[0], gr.float() / x_s.numel())
    sr, sf = step(v_real), step(v_fake)
    norm = (x_s.detach() - sr).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(gr.float(), (sf - sr) / norm, rtol=1e-5, atol=1e-6)


def test_consistency_h_and_two_sample_loss_hand_computed():
    assert D.consistency_h(torch.tensor([[1.25]]), torch.tensor([[-3.0]]), 0.25).item() == pytest.approx(2.0)
    a = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    h1, h2 = t64([[1.0, 2.0]]), t64([[3.0, -1.0]])
    loss = D.consistency_two_sample_loss(a, h1, h2)
    assert loss.item() == pytest.approx(0.5)  # mean(1·3, 2·(−1)) = (3 − 2)/2
    # ∂/∂a (h1 − a)(h2 − a) = −(h1 + h2 − 2a) → /2 = [−2, −0.5]
    torch.testing.assert_close(torch.autograd.grad(loss, a)[0], t64([[-2.0, -0.5]]))
    assert D.consistency_two_sample_loss(a, t64([[float("nan"), 0.0]]), h2).item() == 0.0


def test_consistency_two_sample_estimate_is_unbiased_monte_carlo():
    # h' ~ N(μ = 1, 0.5²) i.i.d., anchor a = 0.3: target ‖E h' − a‖² = 0.7² = 0.49 per element
    g = torch.Generator().manual_seed(1234)
    m = 20000
    a = torch.full((m, 1), 0.3)
    h1, h2 = 1.0 + 0.5 * torch.randn(m, 1, generator=g), 1.0 + 0.5 * torch.randn(m, 1, generator=g)
    per = (h1 - a) * (h2 - a)  # what the loss averages
    est = D.consistency_two_sample_loss(a, h1, h2).item()
    assert est == pytest.approx(per.mean().item(), rel=1e-5)
    tol = 4 * per.std().item() / math.sqrt(m)  # 4 standard errors of the mean (≈ 0.017)
    assert abs(est - 0.49) < tol
    # the one-sample MSE is biased by Var h' = 0.25: far outside the same tolerance
    assert abs(((h1 - a) ** 2).mean().item() - 0.49) > 10 * tol


def test_sample_consistency_timesteps():
    t = D.sample_consistency_timesteps(torch.tensor([5.0, 500.0]), max_delta=1)
    torch.testing.assert_close(t, torch.tensor([4.0, 499.0]))  # Δ ≡ 1
    t = D.sample_consistency_timesteps(torch.full((3000,), 100.0), torch.Generator().manual_seed(0))
    assert t.min().item() == 0.0 and t.max().item() == 99.0  # 100 − U{1..200}, clamped at 0
    with pytest.raises(ValueError, match="max_delta"):
        D.sample_consistency_timesteps(torch.zeros(1), max_delta=0)


def test_weighted_reward_hinge_and_last_step():
    r = torch.tensor([[26.0, 50.0], [52.0, 100.0]])  # PickScore, CLIPScore → /26, /100
    s = D.RTDMD_BP_REWARD_SCALES
    rw = D.weighted_reward(r, [1.0, 1.0], [s["pickscore"], s["clipscore"]])
    torch.testing.assert_close(rw, torch.tensor([1.5, 3.0]))  # 1 + 0.5, 2 + 1
    R = torch.tensor([1.5, 3.5], requires_grad=True)
    h = D.reward_hinge_loss(R, margin=3.0)
    assert h.item() == pytest.approx(0.75)  # mean(relu([1.5, −0.5]))
    torch.testing.assert_close(torch.autograd.grad(h, R)[0], torch.tensor([-0.5, 0.0]))
    assert D.rtdmd_last_step_loss(torch.tensor(2.0), torch.tensor(10.0)).item() == pytest.approx(3e-3)
    with pytest.raises(ValueError, match=r"per_reward must be \(N, 3\)"):
        D.weighted_reward(r, [1.0, 1.0, 1.0])


def test_subgrpo_advantages_hand_computed():
    # r1 = [1, 3, 2, 2], groups [0, 0, 1, 1]: A1 = [−1, 1, 0, 0]/(√0.5 + ε) ≈ √2·[−1, 1, 0, 0]
    # r2 = [0, 0, 1, 3]: A2 = [0, 0, −1, 1]/(√1.5 + ε); A = A1 + A2, pop std = √((4 + 4/3)/4) = √(4/3)
    # → re-standardised ≈ [−√1.5, √1.5, −1/√2, 1/√2] = [−1.22462, 1.22462, −0.70708, 0.70708]
    r = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, 3.0]])
    gid = torch.tensor([0, 0, 1, 1])
    a = D.subgrpo_advantages(r, [1.0, 1.0], gid)
    torch.testing.assert_close(a, torch.tensor([-1.22462, 1.22462, -0.70708, 0.70708]), atol=1e-4, rtol=0)
    torch.testing.assert_close(D.subgrpo_advantages(r, [1.0, 1.0], gid, clip=1.0),
                               torch.tensor([-1.0, 1.0, -0.70708, 0.70708]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"group_ids must be \(4,\)"):
        D.subgrpo_advantages(r, [1.0, 1.0], torch.tensor([0, 1]))


def test_subgrpo_steps():
    s = D.subgrpo_steps(7)
    assert s == D.subgrpo_steps(7) and len(s) == 2 and set(s) <= {0, 1, 2} and list(s) == sorted(s)
    assert len({D.subgrpo_steps(k) for k in range(20)}) >= 2
    assert D.subgrpo_steps(0, num_stochastic=3, num_train=3) == (0, 1, 2)
    with pytest.raises(ValueError, match="num_train <= num_stochastic"):
        D.subgrpo_steps(0, num_stochastic=2, num_train=3)


# ============================================================================================ R_dm / GNDM
def test_dm_reward_hand_computed():
    target = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    fake = torch.tensor([[1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    real = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # sample 0: err_fake = (1 + 1)/2 = 1, err_real = (0 + 4)/2 = 2 → −1; sample 1: (9 + 4)/2 − 0 = 6.5
    r = D.dm_reward(fake, real, target)
    torch.testing.assert_close(r, torch.tensor([-1.0, 6.5]))
    assert not r.requires_grad
    torch.testing.assert_close(D.dm_reward(fake, real, target, weight=torch.tensor([2.0, 0.5])),
                               torch.tensor([-2.0, 3.25]))
    with pytest.raises(ValueError, match="shape mismatch"):
        D.dm_reward(fake, real, torch.zeros(2, 3))


def test_group_normalise_hand_computed_and_cancels_offset_and_scale():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 4.0])
    gid = torch.tensor([0, 0, 1, 1, 2])
    # group 0: mean 2, pop std 1 → ±1/(1 + 1e-4); group 1 equal → 0; group 2 single → 0
    a = D.group_normalise(r, gid)
    torch.testing.assert_close(a, torch.tensor([-1 / 1.0001, 1 / 1.0001, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(D.group_normalise(r, gid, clip=0.5), torch.tensor([-0.5, 0.5, 0.0, 0.0, 0.0]))
    # a per-group offset c(t) and a per-group scale w(t) cancel (δ → 0)
    shifted = r * torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0]) + torch.tensor([7.0, 7.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(D.group_normalise(shifted, gid, delta=0.0), D.group_normalise(r, gid, delta=0.0))
    with pytest.raises(ValueError, match="both be"):
        D.group_normalise(r, gid[:3])


def test_group_shared_draws():
    gid = torch.tensor([5, 3, 5, 3])
    t, eps = D.group_shared_draws(gid, (2, 2), torch.Generator().manual_seed(0))
    assert t[0] == t[2] and t[1] == t[3] and t[0] != t[1]
    assert torch.equal(eps[0], eps[2]) and torch.equal(eps[1], eps[3]) and not torch.equal(eps[0], eps[1])
    assert eps.shape == (4, 2, 2) and torch.all((t >= 0.02) & (t <= 0.98))
    t2, eps2 = D.group_shared_draws(gid, (2, 2), torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and torch.equal(eps, eps2)


def test_ppo_ratio_and_clip_loss_hand_computed():
    new = torch.tensor([0.1, 0.0], requires_grad=True)
    old = torch.tensor([0.0, 0.2], requires_grad=True)
    r = D.ppo_ratio(new, old)
    torch.testing.assert_close(r, torch.tensor([math.exp(0.1), math.exp(-0.2)]))
    gn, go = torch.autograd.grad(r.sum(), [new, old], allow_unused=True)
    torch.testing.assert_close(gn, r.detach())  # d exp(Δ)/d log π_θ = r
    assert go is None  # old log-probs are constants
    # r = [1.5, 0.5, 1], A = [1, 1, −2], ε = 0.2: max(−1.5, −1.2) = −1.2; max(−0.5, −0.8) = −0.5; max(2, 2) = 2
    ratio = torch.tensor([1.5, 0.5, 1.0], requires_grad=True)
    loss, st = D.ppo_clip_loss(ratio, torch.tensor([1.0, 1.0, -2.0]), clip_range=0.2)
    assert loss.item() == pytest.approx(0.1)  # (−1.2 − 0.5 + 2)/3
    assert st["clipfrac"] == pytest.approx(2 / 3)
    assert st["approx_kl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)  # 0.107476
    # clipped sample 0 gets no gradient; sample 1: −A/3; sample 2: −A/3 = 2/3
    torch.testing.assert_close(torch.autograd.grad(loss, ratio)[0], torch.tensor([0.0, -1 / 3, 2 / 3]))


def test_gndmr_weights_modes():
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    w = D.GNDMRWeights(2, "fixed", base_weights=[1.0, 2.0])
    torch.testing.assert_close(w.combine(adv), torch.tensor([3.0, 0.0]))  # 1 + 2, −1 + 1
    inv = D.GNDMRWeights(2, "inverse_std")
    inv.update(torch.tensor([[0.0, 0.0], [2.0, 20.0]]))  # pop var [1, 100] → std [1, 10]
    # w ∝ [1, 0.1], rescaled to Σ = 2: [2/1.1, 0.2/1.1]
    torch.testing.assert_close(inv.weights(), t64([2 / 1.1, 0.2 / 1.1]))
    inv.update(torch.tensor([[0.0, 0.0], [4.0, 20.0]]))  # var [4, 100] → EMA 0.9·1 + 0.1·4 = 1.3, 100
    raw = torch.tensor([1 / math.sqrt(1.3), 0.1], dtype=F64)
    torch.testing.assert_close(inv.weights(), 2 * raw / raw.sum())  # ≈ [1.79530, 0.20470]
    inv.update(torch.tensor([[float("nan"), 0.0], [1.0, 20.0]]))  # column 0 has one finite value: kept
    assert inv.running_var[0].item() == pytest.approx(1.3)
    # state is tensors only and round-trips
    sd = inv.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    other = D.GNDMRWeights(2, "inverse_std")
    other.load_state_dict(sd)
    torch.testing.assert_close(other.weights(), inv.weights())
    with pytest.raises(ValueError, match="state is for"):
        D.GNDMRWeights(3, "inverse_std").load_state_dict(sd)
    ext = D.GNDMRWeights(2, "external")
    torch.testing.assert_close(ext.combine(adv, alpha=torch.tensor([0.25, 0.75])), torch.tensor([1.0, 0.125]))
    with pytest.raises(ValueError, match="needs alpha"):
        ext.weights()
    with pytest.raises(ValueError, match="non-negative"):
        ext.weights(torch.tensor([-1.0, 2.0]))
    with pytest.raises(ConfigError, match="valid: external, fixed, inverse_std"):
        D.GNDMRWeights(2, "marble")
    with pytest.raises(ValueError, match=r"advantages must be \(N, 2\)"):
        w.combine(torch.zeros(3))


def test_gndm_pathwise_gradient_hand_computed():
    x = t64([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
    real = t64([[0.0, 1.0], [2.0, 4.0], [1.0, 1.0]])
    fake = t64([[0.5, 1.5], [2.5, 3.0], [2.0, 1.0]])
    gid = torch.tensor([0, 0, 1])
    # per-sample mean|x − x̂_real| = [1.5, 1, 1]; group 0 normaliser (1.5 + 1)/2 = 1.25, group 1: 1
    # diffs [0.5, 0.5], [0.5, −1], [1, 0] → g = [0.4, 0.4], [0.4, −0.8], [1, 0]
    g = D.gndm_pathwise_gradient(x, real, fake, gid)
    torch.testing.assert_close(g, t64([[0.4, 0.4], [0.4, -0.8], [1.0, 0.0]]))
    # re-weight by max(0, 1 − 0.5·Â) with Â = [1, −1, 0] → [0.5, 1.5, 1]
    g = D.gndm_pathwise_gradient(x, real, fake, gid, advantages=t64([1.0, -1.0, 0.0]), reweight_scale=0.5)
    torch.testing.assert_close(g, t64([[0.2, 0.2], [0.6, -1.2], [1.0, 0.0]]))
    # groups of one sample reduce to DMD2's per-sample normaliser
    torch.testing.assert_close(D.gndm_pathwise_gradient(x, real, fake, torch.arange(3)), D.dmd_gradient(x, real, fake))
    with pytest.raises(ValueError, match="needs advantages"):
        D.gndm_pathwise_gradient(x, real, fake, gid, reweight_scale=0.5)
    with pytest.raises(ValueError, match=r"group_ids must be \(3,\)"):
        D.gndm_pathwise_gradient(x, real, fake, gid[:2])


def test_gndm_estimator_flag():
    assert D.check_gndm_estimator("pathwise") == "pathwise"
    with pytest.raises(ConfigError, match="valid: pathwise, policy_gradient"):
        D.check_gndm_estimator("reinforce")


def test_ac_fake_target_is_an_unbiased_velocity_target():
    # x_s = (1−s)x0 + sε, x_t = a·x_s + σ_ts·ξ = (1−t)x0 + n with n = a s ε + σ_ts ξ ~ N(0, t²). The flow velocity at
    # x_t is E[n/t − x0 | x_t]. v* − (n/t − x0) = c_ε ε + c_ξ ξ is linear in (ε, ξ); it is uncorrelated with n (hence,
    # jointly Gaussian, mean-zero given x_t) iff c_ε·a s + c_ξ·σ_ts = 0. Read c_ε, c_ξ off the implementation.
    for s, t in [(0.25, 0.6), (0.5, 0.75), (0.1, 0.98)]:
        a, sig = (v.item() for v in D.subinterval_coefficients(s, t))

        def v_star(x0, eps, xi):
            x_s = t64([[(1 - s) * x0 + s * eps]])
            return D.ac_fake_target(x_s, s, t, t64([[xi]])).item() - ((a * s * eps + sig * xi) / t - x0)

        assert v_star(1.7, 0.0, 0.0) == pytest.approx(0.0, abs=1e-9)  # no x0 term left
        c_eps, c_xi = v_star(0.0, 1.0, 0.0), v_star(0.0, 0.0, 1.0)
        assert c_eps * a * s + c_xi * sig == pytest.approx(0.0, abs=1e-9)


def test_dm_reward_recovers_gaussian_log_ratio():
    # VP x_t = αx + σε with α = 0.8, σ = 0.6; real data N(0, 1), fake N(m = 1, 1): the exact ε-predictors are
    # ε_real(x_t) = σ·x_t, ε_fake(x_t) = σ·(x_t − αm). With shared ε draws, E R_dm = σ²α²[(x − m)² − x²], so
    # w = 1/(2σ²α²) gives log p_real(x) − log p_fake(x) = [(x − m)² − x²]/2 (up to the Monte-Carlo error).
    alpha, sigma, m, n = 0.8, 0.6, 1.0, 20000
    eps = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    w = torch.full((n,), 1 / (2 * sigma**2 * alpha**2), dtype=F64)
    for x in (-1.0, 0.0, 0.5, 2.0):
        x_t = alpha * x + sigma * eps
        r = D.dm_reward(sigma * (x_t - alpha * m), sigma * x_t, eps, weight=w)
        tol = 4 * r.std().item() / math.sqrt(n)
        assert abs(r.mean().item() - ((x - m) ** 2 - x**2) / 2) < tol


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_follow_the_input_device(device):
    # random draws come from CPU generators (identical on every rank) and are moved to the inputs' device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 2, 2, generator=g).to(device).requires_grad_(True)
    real, fake = torch.randn(4, 2, 2, 2, generator=g).to(device), torch.randn(4, 2, 2, 2, generator=g).to(device)
    gid = torch.tensor([0, 0, 1, 1], device=device)
    loss, gr = D.dmd_loss(x, real, fake)
    loss.backward()
    assert x.grad.device.type == device and gr.device.type == device
    assert D.sample_ac_timesteps(torch.zeros(4, device=device), g).device.type == device
    assert D.sample_consistency_timesteps(torch.full((4,), 50.0, device=device), g).device.type == device
    sig = torch.full((4,), 0.7, device=device)
    assert D.ac_fake_loss(x, real, torch.zeros(4, device=device), sig, fake).device.type == device
    assert D.subgrpo_advantages(torch.randn(4, 2, generator=g).to(device), [1.0, 1.0], gid).device.type == device
    assert D.gndm_pathwise_gradient(x, real, fake, gid, torch.zeros(4, device=device), 0.5).device.type == device
    assert D.GNDMRWeights(2).combine(torch.ones(4, 2, device=device)).device.type == device
    t, eps = D.group_shared_draws(gid, (2,), g)
    assert t.device.type == "cpu" and eps.shape == (4, 2)
