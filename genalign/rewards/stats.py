"""Set statistics on feature matrices (rows = samples), in torch float64.

* :func:`frechet_distance` — FD / FID / FAD (Heusel et al., arXiv 1706.08500; Kilgour et al., arXiv 1812.08466):
  ``FD = ‖μ_g − μ_r‖² + Tr(Σ_g) + Tr(Σ_r) − 2 Tr((Σ_g Σ_r)^{½})``.
  The trace of the square root is computed stably as ``Tr((Σ_r^{½} Σ_g Σ_r^{½})^{½})`` — the two matrices
  are similar, and the second is symmetric PSD, so ``Tr = Σ sqrt(max(λ, 0))`` over its eigenvalues (real,
  never NaN, also for rank-deficient covariances). ``eps`` adds ``eps·I`` to both covariances.
* :func:`mmd2_unbiased` — unbiased MMD² (Gretton et al. 2012) with the KID polynomial kernel
  ``k(a, b) = (aᵀb/d + 1)³`` (Bińkowski et al., arXiv 1801.01401).
* :func:`vendi_score` — Vendi score (Friedman & Dieng, arXiv 2210.02410): ``exp(−Σ λ log λ)`` over the
  eigenvalues of ``K/n`` with ``K_ij = cos(e_i, e_j)``.
* :func:`gaussian_log_density` — per-sample log-density under a Gaussian fit (the Gaussian FD compares), with
  a shrinkage ridge for rank-deficient covariances.

Leave-one-out versions (``*_loo``) return, for each generated sample i, the statistic of the set without i;
distributional rewards use them to rank samples by their contribution.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

_DT = torch.float64


def _f64(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.detach().to(_DT)


def mean_cov(x: torch.Tensor, allow_single: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (denominator n − 1) of the rows of ``x`` (n, d); needs n ≥ 2
    (or n ≥ 1 with ``allow_single``: a single point has zero covariance)."""
    x = _f64(x)
    lo = 1 if allow_single else 2
    if x.dim() != 2 or x.shape[0] < lo:
        raise ValueError(f"need a (n >= {lo}, d) feature matrix, got shape {tuple(x.shape)}")
    mu = x.mean(0)
    xc = x - mu
    if x.shape[0] == 1:
        return mu, torch.zeros(x.shape[1], x.shape[1], dtype=_DT, device=x.device)
    return mu, xc.T @ xc / (x.shape[0] - 1)


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, shrinkage: float = 0.0) -> torch.Tensor:
    """Per-row log N(x; μ, Σ_λ) in float64, with Σ_λ = Σ + λ·(tr Σ / d)·I (``shrinkage`` λ ≥ 0; isotropic ridge
    scaled to the mean eigenvalue, so rank-deficient covariances — n < d, ReLU features — stay invertible).
    Raises ValueError when Σ_λ is not positive definite (e.g. λ = 0 on a rank-deficient Σ)."""
    x, mu, sigma = _f64(x), _f64(mu).to(x.device), _f64(sigma).to(x.device)
    if x.dim() != 2 or mu.shape != (x.shape[1],) or sigma.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)}")
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    d = x.shape[1]
    s = 0.5 * (sigma + sigma.T)
    s = s + shrinkage * (torch.trace(s) / d) * torch.eye(d, dtype=_DT, device=x.device)
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) != 0:
        raise ValueError("covariance is not positive definite; use shrinkage > 0")
    z = torch.linalg.solve_triangular(chol, (x - mu).T, upper=False)  # (d, n): L⁻¹(x − μ)
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (z.pow(2).sum(0) + logdet + d * math.log(2 * math.pi))


def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigendecomposition (negative round-off eigenvalues clamped to 0)."""
    sigma = (sigma + sigma.transpose(-1, -2)) / 2
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def psd_factor(sigma: torch.Tensor) -> torch.Tensor:
    """Some F with F Fᵀ = Σ: the Cholesky factor, or the symmetric square root when Σ is singular."""
    sigma = (sigma + sigma.T) / 2
    chol, info = torch.linalg.cholesky_ex(sigma)
    return chol if int(info) == 0 else psd_sqrt(sigma)


def _sum_sqrt_eig(m: torch.Tensor) -> torch.Tensor:
    m = (m + m.transpose(-1, -2)) / 2
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum(-1)


def trace_sqrt_product(factor_g: torch.Tensor, sigma_r: torch.Tensor) -> torch.Tensor:
    """Tr((Σ_g Σ_r)^{½}) for Σ_g = F Fᵀ: the eigenvalues of Σ_g Σ_r equal those of the symmetric PSD
    matrix Fᵀ Σ_r F (plus zeros), so the trace is Σ sqrt(max(λ, 0)) — real and finite for any rank.
    ``F`` may be (d, k) with k < d (e.g. centred data / sqrt(n − 1)), which makes this cheap for small sets."""
    return _sum_sqrt_eig(factor_g.transpose(-1, -2) @ sigma_r @ factor_g)


def frechet_distance_from_stats(mu_g, sigma_g, mu_r, sigma_r, eps: float = 0.0, factor_g=None):
    """FD between Gaussians N(mu_g, sigma_g) and N(mu_r, sigma_r).

    ``factor_g`` (F with F Fᵀ = sigma_g, before eps) may be given to skip factorising sigma_g."""
    mu_g, sigma_g, mu_r, sigma_r = map(_f64, (mu_g, sigma_g, mu_r, sigma_r))
    d = sigma_r.shape[-1]
    if eps:
        eye = torch.eye(d, dtype=_DT, device=sigma_r.device)
        sigma_g = sigma_g + eps * eye
        sigma_r = sigma_r + eps * eye
        factor_g = None
    if factor_g is None:
        factor_g = psd_factor(sigma_g)
    diff = ((mu_g - mu_r) ** 2).sum(-1)
    tr = torch.trace(sigma_g) + torch.trace(sigma_r)
    return diff + tr - 2 * trace_sqrt_product(_f64(factor_g), sigma_r)


def frechet_distance(gen: torch.Tensor, ref: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """FD between the feature sets ``gen`` (n, d) and ``ref`` (m, d), a float64 scalar tensor.

    Use ``eps > 0`` (e.g. 1e-6) when n or m is below d; without it the result is still real and finite.
    When n − 1 ≤ d the generated covariance is factorised by its centred data (no d×d decomposition).
    A single generated sample (n = 1) is a point mass (zero covariance).
    """
    gen = _f64(gen)
    mu_g, s_g = mean_cov(gen, allow_single=True)
    mu_r, s_r = mean_cov(ref)
    n, d = gen.shape
    factor = None
    if not eps and 2 <= n <= d + 1:
        factor = (gen - mu_g).T / (n - 1) ** 0.5
    return frechet_distance_from_stats(mu_g, s_g, mu_r, s_r, eps=eps, factor_g=factor)


def loo_mean_cov(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Means (n, d) and unbiased covariances (n, d, d) of ``x`` with each row i left out in turn (n ≥ 3).

    Rank-one downdate: with S = Σ_j (x_j − μ)(x_j − μ)ᵀ, removing x_i gives
    S₋ᵢ = S − n/(n−1)·(x_i − μ)(x_i − μ)ᵀ and μ₋ᵢ = (nμ − x_i)/(n−1).
    """
    x = _f64(x)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"leave-one-out statistics need at least 3 samples, got {n}")
    mu, cov = mean_cov(x)
    s = cov * (n - 1)
    dx = x - mu
    mus = (n * mu - x) / (n - 1)
    covs = (s.unsqueeze(0) - (n / (n - 1)) * dx.unsqueeze(2) * dx.unsqueeze(1)) / (n - 2)
    return mus, covs


def frechet_distance_loo(gen: torch.Tensor, ref: torch.Tensor, eps: float = 0.0, chunk: int = 64) -> torch.Tensor:
    """(n,) FD(gen without sample i, ref) for every i (n ≥ 3).

    Means and traces use rank-one downdates. For Tr((Σ₋ᵢ Σ_r)^{½}):
    * small sets (n − 2 ≤ d, eps = 0): Σ₋ᵢ = G Gᵀ with G the centred leave-one-out data / sqrt(n − 2), so the
      eigenvalues come from (n−1)×(n−1) matrices C T₋ᵢ C / (n − 2), T = X Σ_r Xᵀ, C the centring matrix;
    * otherwise: with Σ_r = L Lᵀ, Lᵀ Σ₋ᵢ L = (Lᵀ S L − n/(n−1)·u uᵀ)/(n − 2) (+ eps·LᵀL), u = Lᵀ(x_i − μ):
      batched d×d eigenvalue problems, ``chunk`` at a time.
    """
    gen = _f64(gen)
    n, d = gen.shape
    if n < 3:
        raise ValueError(f"leave-one-out statistics need at least 3 samples, got {n}")
    mu_r, s_r = mean_cov(ref)
    eye = torch.eye(d, dtype=_DT, device=gen.device)
    if eps:
        s_r = s_r + eps * eye
    mu, cov = mean_cov(gen)
    s = cov * (n - 1)
    dx = gen - mu
    c = n / (n - 1)
    mus = (n * mu - gen) / (n - 1)
    diff = ((mus - mu_r) ** 2).sum(-1)
    tr_g = (torch.trace(s) - c * (dx ** 2).sum(-1)) / (n - 2) + (eps * d if eps else 0.0)
    tr = tr_g + torch.trace(s_r)
    out = []
    if not eps and n - 2 <= d:
        t = gen @ s_r @ gen.T  # (n, n)
        idx = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, n)]) for i in range(n)]).to(gen.device)
        cm = torch.eye(n - 1, dtype=_DT, device=gen.device) - 1.0 / (n - 1)
        for i in range(0, n, chunk):
            sub = idx[i : i + chunk]
            ti = t[sub.unsqueeze(2), sub.unsqueeze(1)]
            out.append(_sum_sqrt_eig(cm @ ti @ cm / (n - 2)))
    else:
        l = psd_factor(s_r)
        lsl = l.T @ s @ l
        ltl = l.T @ l
        u = dx @ l  # rows u_iᵀ = (x_i − μ)ᵀ L
        for i in range(0, n, chunk):
            ui = u[i : i + chunk]
            m = (lsl.unsqueeze(0) - c * ui.unsqueeze(2) * ui.unsqueeze(1)) / (n - 2)
            if eps:
                m = m + eps * ltl
            out.append(_sum_sqrt_eig(m))
    return diff + tr - 2 * torch.cat(out)


def kid_kernel(a: torch.Tensor, b: torch.Tensor, degree: int = 3, gamma: Optional[float] = None, coef0: float = 1.0):
    """Polynomial kernel ``(γ aᵀb + c)^degree`` with γ = 1/d by default (the KID kernel)."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (gamma * a @ b.T + coef0) ** degree


def _mmd_terms(x, y, **kw):
    x, y = _f64(x), _f64(y)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD² needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = kid_kernel(x, x, **kw), kid_kernel(y, y, **kw), kid_kernel(x, y, **kw)
    return kxx, kyy, kxy


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, **kernel_kw) -> torch.Tensor:
    """Unbiased MMD² between rows of ``x`` (m, d) and ``y`` (n, d)::

        1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)
    """
    kxx, kyy, kxy = _mmd_terms(x, y, **kernel_kw)
    m, n = kxx.shape[0], kyy.shape[0]
    sxx = kxx.sum() - torch.diagonal(kxx).sum()
    syy = kyy.sum() - torch.diagonal(kyy).sum()
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * kxy.sum() / (m * n)


def mmd2_unbiased_loo(x: torch.Tensor, y: torch.Tensor, **kernel_kw) -> torch.Tensor:
    """(m,) unbiased MMD²(x without row i, y) for every i (m ≥ 3), in O(m² + mn)."""
    kxx, kyy, kxy = _mmd_terms(x, y, **kernel_kw)
    m, n = kxx.shape[0], kyy.shape[0]
    if m < 3:
        raise ValueError(f"leave-one-out MMD² needs at least 3 samples, got {m}")
    diag = torch.diagonal(kxx)
    sxx = kxx.sum() - diag.sum()
    row_off = kxx.sum(1) - diag  # Σ_{j≠i} k(x_i, x_j)
    sxx_loo = sxx - 2 * row_off
    syy = kyy.sum() - torch.diagonal(kyy).sum()
    sxy_loo = kxy.sum() - kxy.sum(1)
    mm = m - 1
    return sxx_loo / (mm * (mm - 1)) + syy / (n * (n - 1)) - 2 * sxy_loo / (mm * n)


def _entropy_exp(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[-1]
    lam = torch.linalg.eigvalsh(k / n).clamp_min(0)
    plogp = torch.where(lam > 0, lam * torch.log(torch.where(lam > 0, lam, torch.ones_like(lam))), torch.zeros_like(lam))
    return torch.exp(-plogp.sum(-1))


def cosine_gram(x: torch.Tensor) -> torch.Tensor:
    x = _f64(x)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.T


def vendi_score(x: torch.Tensor) -> torch.Tensor:
    """Vendi score with the cosine-similarity kernel; 1 for identical rows, n for orthogonal rows."""
    if _f64(x).shape[0] < 1:
        raise ValueError("Vendi score needs at least one sample")
    return _entropy_exp(cosine_gram(x))


def vendi_score_loo(x: torch.Tensor) -> torch.Tensor:
    """(n,) Vendi score of the set without row i, for every i (n ≥ 2); batched eigendecompositions."""
    k = cosine_gram(x)
    n = k.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out Vendi needs at least 2 samples, got {n}")
    idx = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, n)]) for i in range(n)]).to(k.device)
    sub = k[idx.unsqueeze(2), idx.unsqueeze(1)]  # (n, n-1, n-1)
    return _entropy_exp(sub)
