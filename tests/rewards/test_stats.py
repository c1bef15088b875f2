
import numpy as np
import pytest
import scipy.linalg
import torch

from genalign.rewards import stats


def scipy_fd(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fd_hand_values_1d():
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations
    x = torch.tensor([[0.0], [2.0]])  # mean 1, var 2
    y = torch.tensor([[1.0], [3.0], [5.0]])  # mean 3, var 4
    expect = (1 - 3) ** 2 + (2 ** 0.5 - 2.0) ** 2
    assert stats.frechet_distance(x, y).item() == pytest.approx(expect, rel=1e-12)


def test_fd_diagonal_hand_values_and_identity():
    # independent dims: FD = |dmu|^2 + sum (sqrt(v1) - sqrt(v2))^2
    mu_g, mu_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    s_g, s_r = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 9.0]))
    fd = stats.frechet_distance_from_stats(mu_g, s_g, mu_r, s_r)
    assert fd.item() == pytest.approx(1 + 4 + (2 - 1) ** 2 + (1 - 3) ** 2)
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    assert stats.frechet_distance(x, x).item() == pytest.approx(0.0, abs=1e-9)


def test_fd_agrees_with_scipy_sqrtm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    y = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8)) + 0.3
    ours = stats.frechet_distance(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert ours == pytest.approx(scipy_fd(x, y), rel=1e-7)


def test_fd_rank_deficient_is_finite_and_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 16))  # rank 4 covariance in 16-D
    y = rng.normal(size=(7, 16)) + 1.0
    ours = stats.frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert torch.isfinite(ours) and ours.item() > 0
    assert ours.item() == pytest.approx(scipy_fd(x, y), rel=1e-5)
    with_eps = stats.frechet_distance(torch.from_numpy(x), torch.from_numpy(y), eps=1e-6)
    assert with_eps.item() == pytest.approx(ours.item(), rel=1e-3)
    # identical rank-deficient sets: exactly (numerically) zero, never NaN
    # (sqrt of round-off-sized zero eigenvalues leaves an error ~1e-8 of the traces)
    same = stats.frechet_distance(torch.from_numpy(x), torch.from_numpy(x))
    assert torch.isfinite(same) and abs(same.item()) < 1e-6 * np.trace(np.cov(x, rowvar=False))


@pytest.mark.parametrize("n,d,eps", [(7, 3, 0.0), (6, 10, 0.0), (6, 10, 1e-3), (9, 4, 1e-2)])
def test_fd_loo_matches_direct(n, d, eps):
    # covers both code paths: small sets (Gram matrices, n - 2 <= d) and d x d downdates (n > d + 2 or eps)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, d, generator=g), torch.randn(12, d, generator=g) + 0.5
    loo = stats.frechet_distance_loo(x, y, eps=eps, chunk=4)
    direct = torch.stack([stats.frechet_distance(torch.cat([x[:i], x[i + 1:]]), y, eps=eps) for i in range(n)])
    assert torch.allclose(loo, direct, atol=1e-8), (loo, direct)


def test_mmd_hand_values_and_loo():
    # d = 1, k(a, b) = (ab + 1)^3
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[1.0], [2.0]])
    kxx = 2 * (0 * 1 + 1) ** 3 / 2  # off-diagonal pair (0,1) twice / (2*1)
    kyy = 2 * (1 * 2 + 1) ** 3 / 2
    kxy = ((0 + 1) ** 3 + (0 + 1) ** 3 + (1 + 1) ** 3 + (2 + 1) ** 3) / 4
    assert stats.mmd2_unbiased(x, y).item() == pytest.approx(kxx + kyy - 2 * kxy)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    loo = stats.mmd2_unbiased_loo(a, b)
    direct = torch.stack([stats.mmd2_unbiased(torch.cat([a[:i], a[i + 1:]]), b) for i in range(6)])
    assert torch.allclose(loo, direct, atol=1e-10)


def test_vendi_hand_values():
    assert stats.vendi_score(torch.eye(4)).item() == pytest.approx(4.0)
    assert stats.vendi_score(torch.ones(5, 3)).item() == pytest.approx(1.0)
    # two identical rows + one orthogonal: K/n eigenvalues 2/3, 1/3
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([2 / 3, 1 / 3])
    assert stats.vendi_score(x).item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item())
    loo = stats.vendi_score_loo(x)
    assert loo.tolist() == pytest.approx([2.0, 2.0, 1.0])


def test_fd_of_two_samples_of_one_distribution_is_small_at_5000x64():
    """Thousands of samples: finite, and two draws of N(0, I) are close (speed: scripts/bench/fd_speed.py)."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5000, 64, generator=g), torch.randn(5000, 64, generator=g)
    fd = stats.frechet_distance(x, y)
    assert torch.isfinite(fd) and 0.0 <= fd.item() < 1.0


def test_fd_single_generated_sample_is_a_point_mass():
    y = torch.tensor([[0.0], [2.0]])  # mean 1, var 2
    # FD(δ_3, N(1, 2)) = (3 - 1)^2 + 0 + 2 - 0
    assert stats.frechet_distance(torch.tensor([[3.0]]), y).item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.mmd2_unbiased(torch.tensor([[3.0]]), y)


def test_gaussian_log_density_hand_values_and_scipy():
    # 1-D by hand: x = 2, μ = 0, σ² = 1, shrinkage 1 -> σ²_λ = 1 + 1·(1/1) = 2
    v = stats.gaussian_log_density(torch.tensor([[2.0]]), torch.zeros(1), torch.ones(1, 1), shrinkage=1.0)
    assert v.item() == pytest.approx(-0.5 * (4 / 2 + np.log(2) + np.log(2 * np.pi)), rel=1e-12)
    # full-rank 3-D against scipy, and the ridge scaled by the mean eigenvalue
    import scipy.stats

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    sigma, mu, x = a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), torch.randn(
        5, 3, generator=g, dtype=torch.float64)
    got = stats.gaussian_log_density(x, mu, sigma)
    want = scipy.stats.multivariate_normal(mu.numpy(), sigma.numpy()).logpdf(x.numpy())
    assert np.allclose(got.numpy(), want, atol=1e-10)
    ridge = sigma + 0.2 * torch.trace(sigma) / 3 * torch.eye(3, dtype=torch.float64)
    want = scipy.stats.multivariate_normal(mu.numpy(), ridge.numpy()).logpdf(x.numpy())
    assert np.allclose(stats.gaussian_log_density(x, mu, sigma, shrinkage=0.2).numpy(), want, atol=1e-10)
    # rank-deficient: a clear error without shrinkage, finite with it
    flat = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="shrinkage > 0"):
        stats.gaussian_log_density(torch.zeros(1, 2), torch.zeros(2), flat)
    assert torch.isfinite(stats.gaussian_log_density(torch.zeros(1, 2), torch.zeros(2), flat, shrinkage=1e-3)).all()
