"""Small, self-contained set metrics for the ``digits`` toy world (the general stats module lives elsewhere).

* :func:`digit_features` — the shipped digit classifier's penultimate features, (N, 3, H, W) -> (N, 64).
* :func:`frechet_distance` — FD between Gaussians fitted to two feature sets (Dowson & Landau 1982; the FID of
  Heusel et al. 2017 on classifier features):
  ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, in float64, with unbiased covariances
  and a symmetric square root from eigendecompositions (negative round-off eigenvalues clipped to 0), so the
  result is real and >= 0 up to round-off.
* :func:`fd_to_real` — FD of generated images to the held-out real digits.
* :func:`mean_pairwise_distance` and :func:`vendi_score` — diversity across seeds/samples, to detect mode
  collapse (Vendi: Friedman & Dieng 2023, exp of the entropy of the eigenvalues of K/n with the cosine kernel).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch


def digit_features(images: torch.Tensor, classifier=None) -> torch.Tensor:
    """Penultimate classifier features (N, D) of images (N, 3, H, W) in [0, 1]; differentiable in ``images``."""
    from .assets import load_classifier

    clf = classifier if classifier is not None else load_classifier(device=images.device)
    return clf.features(images)


def gaussian_stats(features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) in float64 of features (N, D); needs N >= 2."""
    f = features.detach().to(torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a (N>=2, D) feature matrix, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sym_sqrt(m: torch.Tensor) -> torch.Tensor:
    m = 0.5 * (m + m.T)
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    r1 = _sym_sqrt(s1)
    inner = r1 @ s2 @ r1
    inner = 0.5 * (inner + inner.T)
    tr_covmean = torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return float(fd.clamp_min(0))


def feature_fd(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FD between two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


@lru_cache(maxsize=8)
def _real_stats(split: str, device: str):
    from .data import load_split

    images, _ = load_split(split)
    with torch.no_grad():
        return gaussian_stats(digit_features(images.to(device)))


def real_stats(split: str = "heldout", device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Cached (mu, sigma) of the classifier features of a real split (default: the 360 held-out digits)."""
    return _real_stats(split, str(torch.device(device)))


def fd_to_real(images: torch.Tensor, split: str = "heldout") -> float:
    """FD between the classifier features of ``images`` and those of the real ``split`` digits."""
    with torch.no_grad():
        mu, sigma = gaussian_stats(digit_features(images))
    return frechet_distance(mu, sigma, *real_stats(split, images.device))


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i < j of feature rows (0 for a collapsed set)."""
    f = features.detach().to(torch.float64)
    n = f.shape[0]
    if n < 2:
        raise ValueError("mean_pairwise_distance needs at least 2 rows")
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


def vendi_score(features: torch.Tensor, eps: float = 1e-12) -> float:
    """Vendi score with the cosine-similarity kernel: 1 for identical rows, n for n orthogonal rows."""
    f = features.detach().to(torch.float64)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    lam = torch.linalg.eigvalsh(f @ f.T / f.shape[0]).clamp_min(0)
    lam = lam[lam > eps]
    return float(torch.exp(-(lam * lam.log()).sum()))


def diversity(images: torch.Tensor, classifier=None) -> dict:
    """Both diversity measures on classifier features of a set of images."""
    with torch.no_grad():
        f = digit_features(images, classifier)
    return {"mean_pairwise_l2": mean_pairwise_distance(f), "vendi": vendi_score(f)}
