"""MARBLE (METHODS.md §5): min-norm QP vs brute force, Gram matrices (incl. sharded reduction),
smoothing, loss-weight folding, and the amortised identity on a tiny model with the NFT loss."""

import importlib.util
import itertools

import pytest
import torch

from genalign.algorithms import conversions as C
from genalign.algorithms.marble import (
    CoefficientSmoother,
    combine,
    cosines_to_direction,
    gram_matrix,
    min_norm_coefficients,
    min_norm_objective,
    mix_optimality,
    normalized_to_loss_weights,
    per_reward_optimality,
)
from genalign.algorithms.nft import nft_loss
from genalign.errors import ConfigError, GenalignError


def _simplex_grid(k: int, steps: int) -> torch.Tensor:
    """All α with α_i = n_i/steps, Σ n_i = steps (stars and bars)."""
    if k == 2:
        a = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        return torch.stack([a, 1 - a], dim=1)
    pts = []
    for bars in itertools.combinations(range(steps + k - 1), k - 1):
        prev, counts = -1, []
        for b in bars:
            counts.append(b - prev - 1)
            prev = b
        counts.append(steps + k - 2 - prev)
        pts.append(counts)
    return torch.tensor(pts, dtype=torch.float64) / steps


def _brute_force_min(gram: torch.Tensor, steps: int) -> float:
    grid = _simplex_grid(gram.shape[0], steps)
    return torch.einsum("pi,ij,pj->p", grid, gram, grid).min().item()


def _random_unit_gram(k: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, dim, generator=g, dtype=torch.float64)
    grads = torch.randn(k, dim, generator=g, dtype=torch.float64) + 0.3 * shared
    grads[0] *= 5.0  # very different norms: normalisation must remove them
    return grads, gram_matrix(list(grads))[0]


def test_k2_closed_form_frank_wolfe_and_grid_agree():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        a = torch.randn(2, 6, generator=g, dtype=torch.float64)
        gram = a @ a.T  # unnormalised, so the answer is not always ½
        cf = min_norm_coefficients(gram, method="closed_form")
        fw = min_norm_coefficients(gram, method="frank_wolfe")
        grid = _brute_force_min(gram, 2000)
        assert min_norm_objective(gram, cf).item() <= grid + 1e-9
        torch.testing.assert_close(cf, fw, atol=1e-6, rtol=0)
        assert cf.sum().item() == pytest.approx(1.0) and (cf >= 0).all()


def test_k2_closed_form_hand_computed():
    # g1 = (1, 0), g2 = (0, 2): α1 = ⟨g2 − g1, g2⟩/‖g1 − g2‖² = 4/5
    gram = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    torch.testing.assert_close(min_norm_coefficients(gram), torch.tensor([0.8, 0.2], dtype=torch.float64))
    # g1 = (1, 0), g2 = (2, 0): clipped, all weight on the shorter one
    gram = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    torch.testing.assert_close(min_norm_coefficients(gram), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # unit vectors → the bisector
    _, m = _random_unit_gram(2, 10, 3)
    torch.testing.assert_close(min_norm_coefficients(m), torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("k,steps", [(3, 300), (5, 30)])
@pytest.mark.parametrize("seed", range(4))
def test_frank_wolfe_matches_brute_force(k, steps, seed):
    grads, m = _random_unit_gram(k, 12, seed)
    alpha = min_norm_coefficients(m)  # auto → Frank–Wolfe for K > 2
    f_fw = min_norm_objective(m, alpha).item()
    f_grid = _brute_force_min(m, steps)
    assert f_fw <= f_grid * (1 + 1e-3) + 1e-9  # FW is at least as good as the grid
    f_exact = min_norm_objective(m, min_norm_coefficients(m, method="enumerate")).item()
    assert f_fw == pytest.approx(f_exact, rel=1e-3, abs=1e-9)
    assert f_exact <= f_grid + 1e-12
    assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0)
    # the min-norm direction is not anti-aligned with any normalised gradient: ⟨d, ĝ_k⟩ ≥ ‖d‖²
    unit = grads / grads.norm(dim=1, keepdim=True)
    d = combine(list(unit), alpha).double()
    assert ((unit @ d) >= d @ d - 1e-6).all()


def test_conflicting_gradients_get_a_common_descent_direction():
    # two nearly opposite gradients plus an orthogonal one: d must still not oppose any of them
    grads = torch.tensor([[1.0, 0.0, 0.0], [-0.9, 0.1, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    m, _ = gram_matrix(list(grads))
    alpha = min_norm_coefficients(m)
    unit = grads / grads.norm(dim=1, keepdim=True)
    d = combine(list(unit), alpha).double()
    assert ((unit @ d) >= d @ d - 1e-6).all()
    assert d.norm() > 0


def test_degenerate_gradients():
    # a zero gradient is excluded (else MGDA would put all weight on it and stop training)
    grads = [torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([0.0, 1.0])]
    m, norms = gram_matrix(grads)
    assert norms[1] == 0 and (m[1] == 0).all()
    alpha = min_norm_coefficients(m)
    torch.testing.assert_close(alpha, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), atol=1e-8, rtol=0)
    # all zero → uniform
    m, _ = gram_matrix([torch.zeros(3)] * 4)
    torch.testing.assert_close(min_norm_coefficients(m), torch.full((4,), 0.25, dtype=torch.float64))
    # identical gradients: any α is optimal; result must be on the simplex
    m, _ = gram_matrix([torch.tensor([1.0, 2.0])] * 3)
    a = min_norm_coefficients(m)
    assert a.sum().item() == pytest.approx(1.0) and (a >= 0).all()
    with pytest.raises(ValueError, match="NaN"):
        min_norm_coefficients(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ConfigError, match="frank_wolfe"):
        min_norm_coefficients(torch.eye(2), method="simplex")
    with pytest.raises(ConfigError):
        min_norm_coefficients(torch.eye(3), method="closed_form")


def test_qp_method_optional_dependency():
    _, m = _random_unit_gram(4, 9, 11)
    have = importlib.util.find_spec("quadprog") or importlib.util.find_spec("qpsolvers")
    if have:
        a = min_norm_coefficients(m, method="qp")
        exact = min_norm_coefficients(m, method="enumerate")
        assert min_norm_objective(m, a).item() == pytest.approx(min_norm_objective(m, exact).item(), rel=1e-6)
    else:
        with pytest.raises(GenalignError, match="quadprog"):
            min_norm_coefficients(m, method="qp")


def test_gram_matrix_flat_vs_per_parameter_and_none():
    g = torch.Generator().manual_seed(1)
    params = [(3, 4), (5,), (2, 2)]
    per_param = [[torch.randn(*s, generator=g) for s in params] for _ in range(3)]
    per_param[2][1] = None  # reward 3 does not touch parameter 2
    flat = [
        torch.cat([(p if p is not None else torch.zeros(s)).reshape(-1) for p, s in zip(pp, params)])
        for pp in per_param
    ]
    m1, n1 = gram_matrix(flat)
    m2, n2 = gram_matrix(per_param)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(n1, n2)
    stacked = torch.stack(flat).double()
    torch.testing.assert_close(n1, stacked.norm(dim=1))
    unit = stacked / stacked.norm(dim=1, keepdim=True)
    torch.testing.assert_close(m1, unit @ unit.T)
    raw, _ = gram_matrix(flat, normalize=False)
    torch.testing.assert_close(raw, stacked @ stacked.T)


def test_gram_matrix_sharded_all_reduce_equals_full():
    """FSDP-style: each 'rank' holds a disjoint shard of every gradient; summing the partial K×K Gram
    matrices (the hook) reproduces the full Gram and norms. DDP-style identical grads need no hook."""
    g = torch.Generator().manual_seed(2)
    full = [torch.randn(20, generator=g) for _ in range(3)]
    shard0 = [x[:12] for x in full]
    shard1 = [x[12:] for x in full]
    partial1, _ = gram_matrix(shard1, normalize=False)
    calls = []

    def hook(t):  # sums rank 0's partial Gram with rank 1's (what dist.all_reduce(SUM) does)
        calls.append(tuple(t.shape))
        return t + partial1

    m_sharded, n_sharded = gram_matrix(shard0, all_reduce=hook)
    m_full, n_full = gram_matrix(full)
    torch.testing.assert_close(m_sharded, m_full)
    torch.testing.assert_close(n_sharded, n_full)
    assert calls == [(3, 3)]  # only the K×K matrix is reduced, once
    # without the hook a shard's Gram is wrong (the test can fail)
    m_local, _ = gram_matrix(shard0)
    assert not torch.allclose(m_local, m_full)


def test_normalized_to_loss_weights_and_direction():
    alpha = torch.tensor([0.5, 0.5])
    norms = torch.tensor([1.0, 3.0])
    # α'_k ∝ α_k/‖g_k‖ = [0.5, 1/6] → /(2/3) = [0.75, 0.25]
    expected = torch.tensor([0.75, 0.25], dtype=torch.float64)
    torch.testing.assert_close(normalized_to_loss_weights(alpha, norms), expected)
    grads, m = _random_unit_gram(4, 8, 5)
    norms = grads.norm(dim=1)
    a = min_norm_coefficients(m)
    w = normalized_to_loss_weights(a, norms)
    d_unit = combine(list(grads / norms[:, None]), a).double()
    d_w = combine(list(grads), w).double()
    cos = (d_unit @ d_w) / (d_unit.norm() * d_w.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-9)
    assert w.sum().item() == pytest.approx(1.0)
    # zero-norm rewards get weight 0; all-zero leaves α unchanged
    torch.testing.assert_close(
        normalized_to_loss_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 2.0])),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        normalized_to_loss_weights(torch.tensor([0.3, 0.7]), torch.zeros(2)),
        torch.tensor([0.3, 0.7], dtype=torch.float64),
    )


def test_combine_and_cosines():
    grads = [[torch.tensor([1.0, 0.0]), torch.tensor([0.0])], [torch.tensor([0.0, 2.0]), None]]
    out = combine(grads, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(out[0], torch.tensor([0.25, 1.5]))
    torch.testing.assert_close(out[1], torch.tensor([0.0]))
    cos = cosines_to_direction(grads, [torch.tensor([1.0, 1.0]), torch.tensor([0.0])])
    torch.testing.assert_close(cos, torch.tensor([2**-0.5, 2**-0.5], dtype=torch.float64))
    flat = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]
    cos = cosines_to_direction(flat, torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(cos, torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_coefficient_smoother():
    sm = CoefficientSmoother(3, period=10, rho=0.9)
    assert [s for s in range(25) if sm.should_refresh(s)] == [0, 10, 20]
    a1 = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(sm.update(a1), a1.double())  # init="first"
    a2 = torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(sm.update(a2), torch.tensor([0.9, 0.1, 0.0], dtype=torch.float64))
    state = sm.state_dict()
    sm2 = CoefficientSmoother(3)
    sm2.load_state_dict(state)
    torch.testing.assert_close(sm2.alpha, sm.alpha)
    assert sm2.num_updates == 2
    su = CoefficientSmoother(2, rho=0.5, init="uniform")
    torch.testing.assert_close(su.update(torch.tensor([1.0, 0.0])), torch.tensor([0.75, 0.25], dtype=torch.float64))
    with pytest.raises(ConfigError, match="first"):
        CoefficientSmoother(2, init="zero")
    with pytest.raises(ConfigError):
        CoefficientSmoother(2, rho=1.0)
    with pytest.raises(GenalignError):
        CoefficientSmoother(4).load_state_dict(state)


def test_per_reward_optimality_and_mix():
    adv = torch.tensor([[5.0, -2.5, float("nan")], [0.0, 10.0, -5.0]])
    r = per_reward_optimality(adv, adv_clip_max=5.0)
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.25, 0.5], [0.5, 1.0, 0.0]]))
    mix = mix_optimality(r, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mix, torch.tensor([0.625, 0.8125, 0.125]))
    with pytest.raises(ValueError, match="simplex"):
        mix_optimality(r, torch.tensor([0.5, 0.6]))


def test_amortised_identity_on_tiny_model():
    """∇L(Σα_k r_k) == Σα_k ∇L(r_k) for a tiny nn.Linear velocity model and the NFT loss (L affine in r)."""
    torch.manual_seed(0)
    n, d, k = 6, 8, 3
    model = torch.nn.Linear(d + 1, d)
    old = torch.nn.Linear(d + 1, d)
    with torch.no_grad():
        for p, q in zip(old.parameters(), model.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    x0, eps = torch.randn(n, d), torch.randn(n, d)
    t = torch.rand(n) * 0.8 + 0.1
    x_t = C.flow_interpolate(x0, eps, t)
    inp = torch.cat([x_t, t[:, None]], dim=1)
    with torch.no_grad():
        v_old = old(inp)
    r_k = per_reward_optimality(torch.randn(k, n) * 3)
    alpha = torch.tensor([0.2, 0.3, 0.5])

    def grads_for(r):
        model.zero_grad()
        loss, _ = nft_loss(model(inp), v_old, x0, x_t, t, r, beta=0.1)
        loss.backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    per_reward = [grads_for(r_k[i]) for i in range(k)]
    mixed = grads_for(mix_optimality(r_k, alpha))
    expected = combine(per_reward, alpha)
    for a, b in zip(mixed, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert max(g.abs().max().item() for g in mixed) > 1e-4  # not trivially zero
