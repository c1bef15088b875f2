import numpy as np
import pytest
import scipy.linalg
import torch

from genalign.toy import metrics as M


def test_frechet_distance_diagonal_hand_computed():
    # ||mu1 - mu2||^2 = 1 + 4 = 5; sum (sqrt a - sqrt b)^2 = (1 - 2)^2 + (2 - 3)^2 = 2
    fd = M.frechet_distance(torch.tensor([0.0, 0.0]), torch.diag(torch.tensor([1.0, 4.0])),
                            torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([4.0, 9.0])))
    assert fd == pytest.approx(7.0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64)
    s1, s2 = a.T @ a / 50, b.T @ b / 40 + 0.1 * torch.eye(5, dtype=torch.float64)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_rank_deficient_is_finite_and_zero_for_equal():
    f = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))  # 3 points in 8-d: singular covariance
    mu, s = M.gaussian_stats(f)
    assert M.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_stats_unbiased():
    mu, s = M.gaussian_stats(torch.tensor([[0.0], [2.0]]))
    assert mu.item() == 1.0 and s.item() == pytest.approx(2.0)
    assert mu.dtype == torch.float64
    with pytest.raises(ValueError):
        M.gaussian_stats(torch.zeros(1, 3))


def test_diversity_measures_hand_computed():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert M.mean_pairwise_distance(f) == pytest.approx(10 / 3)  # pairs: 5, 0, 5
    assert M.vendi_score(torch.ones(5, 3)) == pytest.approx(1.0)
    assert M.vendi_score(torch.eye(4)) == pytest.approx(4.0)
    # two identical + one orthogonal: eigenvalues of K/3 are 2/3, 1/3
    v = M.vendi_score(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert v == pytest.approx(np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))))


def test_digit_features_and_fd_to_real():
    from genalign.toy import data as D

    x, _ = D.load_split("heldout")
    f = M.digit_features(x[:7])
    assert f.shape == (7, 64)
    assert M.fd_to_real(x) == pytest.approx(0.0, abs=1e-3)
    train, _ = D.load_split("train")
    real_fd = M.fd_to_real(train[:360])
    noise_fd = M.fd_to_real(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert 0 < real_fd < noise_fd
    d = M.diversity(x[:32])
    assert d["vendi"] > 1.5 and d["mean_pairwise_l2"] > 0
