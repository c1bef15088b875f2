"""MARBLE: multi-reward balancing by a min-norm gradient QP on top of DiffusionNFT (METHODS.md §5).

Paper: "MARBLE: Multi-Aspect Reward Balance for Diffusion RL", arXiv 2605.06507 (no public training
code). Min-norm QP from MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
arXiv 1810.04650.

Per reward k: r_k = nft optimality of its own advantage (NaN → A = 0 → r = ½, neutral);
g_k = ∇_θ L_NFT(θ; r_k); ĝ_k = g_k/‖g_k‖; M_kl = ⟨ĝ_k, ĝ_l⟩; α* = argmin_{α∈Δ} αᵀMα; the direction
d = Σ α*_k ĝ_k satisfies ⟨d, ĝ_k⟩ ≥ ‖d‖² for all k. Because L_NFT is affine in r, the amortised form
trains with r_mix = Σ_k ᾱ_k r_k and one backward pass (∇L(r_mix) = Σ ᾱ_k ∇L(r_k) when Σᾱ = 1).

Distributed use of :func:`gram_matrix` (its ``all_reduce`` hook sums a tensor over ranks and returns it):

* **DDP with synchronised gradients** (each rank holds the identical full averaged gradient after
  backward): the local Gram matrix is already global. Pass ``all_reduce=None``. (Reducing anyway multiplies
  the raw Gram by the world size W: the normalised M is unchanged but the norms gain a factor √W.)
  Per-reward gradients taken under ``no_sync()`` differ per rank and are *not* the DDP gradient; the Gram
  of the averaged gradients is not the sum of local Grams, so synchronise the gradients instead.
* **FSDP / ZeRO shards** (each rank holds a disjoint shard of every flattened gradient): a dot product is
  the sum of the per-shard dot products, so each rank computes its partial K×K Gram matrix over its
  shard and the hook sums it, e.g. ``lambda t: accelerator.reduce(t, reduction="sum")`` or
  ``def hook(t): torch.distributed.all_reduce(t); return t``. Only the K×K matrix travels (the squared
  norms are its diagonal, reduced before the square root); gradients are never reduced a second time.

[R]/uncertain parts behind options: the smoother's refresh period M = 10 and ρ = 0.9 (placeholders),
its initialisation, and folding the normalisation into loss weights α'_k ∝ α_k/‖g_k‖
(:func:`normalized_to_loss_weights`). Zero gradients (a reward with no signal, e.g. all-NaN → r ≡ ½ at
θ = θ_old) are excluded from the QP and get α = 0; otherwise MGDA would pick them and stop training.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from genalign.algorithms.nft import nft_optimality
from genalign.errors import ConfigError, GenalignError, choices

GradList = Sequence[Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]]
AllReduce = Optional[Callable[[torch.Tensor], torch.Tensor]]

MIN_NORM_METHODS = ("auto", "closed_form", "frank_wolfe", "enumerate", "qp")
SMOOTHER_INITS = ("first", "uniform")


# ------------------------------------------------------------------------------------------------ QP
def min_norm_objective(gram: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """αᵀMα."""
    g = torch.as_tensor(gram, dtype=torch.float64)
    a = torch.as_tensor(alpha, dtype=torch.float64, device=g.device)
    return a @ g @ a


def _closed_form_2(m: torch.Tensor) -> torch.Tensor:
    # min over α∈[0,1] of ‖α g1 + (1−α) g2‖²: α = ⟨g2 − g1, g2⟩/‖g1 − g2‖², clipped (Sener & Koltun Alg. 1)
    denom = m[0, 0] + m[1, 1] - 2 * m[0, 1]
    if denom <= 1e-12 * max(float(m[0, 0] + m[1, 1]), 1e-30):
        a1 = torch.tensor(0.5, dtype=m.dtype, device=m.device)  # identical vectors: any α is optimal
    else:
        a1 = ((m[1, 1] - m[0, 1]) / denom).clamp(0.0, 1.0)
    return torch.stack([a1, 1 - a1])


def _frank_wolfe(m: torch.Tensor, iters: int, tol: float, away_steps: bool = True) -> torch.Tensor:
    """Frank–Wolfe on the simplex with exact line search (the objective is quadratic), plus away steps."""
    k = m.shape[0]
    alpha = torch.full((k,), 1.0 / k, dtype=m.dtype, device=m.device)
    # warm start at the best vertex if it beats the centre
    diag = torch.diagonal(m)
    j = int(torch.argmin(diag))
    if diag[j] < alpha @ m @ alpha:
        alpha = torch.zeros_like(alpha)
        alpha[j] = 1.0
    for _ in range(iters):
        grad = 2 * m @ alpha
        s = int(torch.argmin(grad))
        d_fw = -alpha.clone()
        d_fw[s] += 1.0
        gap = -(grad @ d_fw)
        if gap <= tol:
            break
        direction, gamma_max = d_fw, 1.0
        if away_steps:
            support = alpha > 0
            if support.any():
                masked = torch.where(support, grad, torch.full_like(grad, -float("inf")))
                v = int(torch.argmax(masked))
                d_aw = alpha.clone()
                d_aw[v] -= 1.0
                if -(grad @ d_aw) > gap and alpha[v] < 1.0:
                    direction = d_aw
                    gamma_max = float(alpha[v] / (1.0 - alpha[v]))
        # f(α + γd) = f(α) + γ·⟨∇f, d⟩ + γ²·dᵀMd  →  γ* = −⟨∇f, d⟩ / (2 dᵀMd)
        curv = direction @ m @ direction
        slope = grad @ direction
        if curv <= 0:
            gamma = gamma_max
        else:
            gamma = float((-slope / (2 * curv)).clamp(0.0, gamma_max))
        alpha = (alpha + gamma * direction).clamp_min(0.0)
        alpha = alpha / alpha.sum()
    return _polish(m, alpha)


def _kkt_on_support(m: torch.Tensor, idx: List[int]) -> Optional[torch.Tensor]:
    """Stationary point of αᵀMα on the face {α_S ≥ 0, Σα = 1} supported on ``idx``: M_SS α_S = μ·1."""
    size = len(idx)
    a_mat = torch.zeros(size + 1, size + 1, dtype=m.dtype)
    a_mat[:size, :size] = m[idx][:, idx]
    a_mat[:size, size] = -1.0
    a_mat[size, :size] = 1.0
    rhs = torch.zeros(size + 1, 1, dtype=m.dtype)
    rhs[size] = 1.0
    a_s = torch.linalg.lstsq(a_mat, rhs).solution.squeeze(1)[:size]
    if torch.any(a_s < -1e-10) or abs(float(a_s.sum()) - 1.0) > 1e-8:
        return None
    alpha = torch.zeros(m.shape[0], dtype=m.dtype)
    alpha[idx] = a_s.clamp_min(0.0)
    return alpha / alpha.sum()


def _polish(m: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Active-set polish of a Frank–Wolfe iterate: solve the KKT system on its support, keep it if better."""
    idx = (alpha > 1e-6).nonzero().squeeze(1).tolist()
    if len(idx) < 2:
        return alpha
    cand = _kkt_on_support(m, idx)
    if cand is not None and float(cand @ m @ cand) < float(alpha @ m @ alpha):
        return cand
    return alpha


def _enumerate_supports(m: torch.Tensor) -> torch.Tensor:
    """Exact solve by KKT over every support set (K ≤ 12): on support S, M_SS α_S = μ·1, Σα = 1, α ≥ 0."""
    k = m.shape[0]
    if k > 12:
        raise ConfigError(f"min_norm method 'enumerate' supports at most 12 rewards, got {k}")
    best, best_val = None, float("inf")
    for size in range(1, k + 1):
        for sub in itertools.combinations(range(k), size):
            alpha = _kkt_on_support(m, list(sub))
            if alpha is None:
                continue
            val = float(alpha @ m @ alpha)
            if val < best_val - 1e-15:
                best, best_val = alpha, val
    assert best is not None  # every vertex is feasible
    return best


def _qp_solver(m: torch.Tensor) -> torch.Tensor:
    """Optional exact check through ``quadprog`` or ``qpsolvers`` (not a genalign dependency)."""
    import numpy as np

    k = m.shape[0]
    p = m.cpu().numpy().astype(np.float64) + 1e-12 * np.eye(k)
    try:
        import quadprog  # type: ignore

        # quadprog: min ½xᵀGx − aᵀx s.t. Cᵀx ≥ b, first meq constraints are equalities
        c = np.concatenate([np.ones((k, 1)), np.eye(k)], axis=1)
        b = np.concatenate([[1.0], np.zeros(k)])
        x = quadprog.solve_qp(2 * p, np.zeros(k), c, b, meq=1)[0]
    except ImportError:
        try:
            import qpsolvers  # type: ignore
        except ImportError:
            raise GenalignError(
                "min_norm method 'qp' needs the optional package quadprog or qpsolvers; "
                f"install one or use another method: {choices(MIN_NORM_METHODS)}"
            ) from None
        solvers = qpsolvers.available_solvers
        if not solvers:
            raise GenalignError("min_norm method 'qp': qpsolvers has no solver backend installed") from None
        x = qpsolvers.solve_qp(
            2 * p, np.zeros(k), A=np.ones((1, k)), b=np.ones(1), lb=np.zeros(k), solver=solvers[0]
        )
        if x is None:
            raise GenalignError("min_norm method 'qp': the QP solver found no solution")
    x = torch.as_tensor(x, dtype=m.dtype).clamp_min(0.0)
    return x / x.sum()


def min_norm_coefficients(
    gram: torch.Tensor, method: str = "auto", iters: int = 50, tol: float = 1e-12, eps: float = 1e-12
) -> torch.Tensor:
    """α* = argmin_{α ∈ simplex} αᵀMα for a K×K PSD Gram matrix (MGDA, arXiv 1810.04650).

    ``method``: ``"auto"`` (closed form for K = 2, Frank–Wolfe for K > 2), ``"closed_form"`` (K = 2 only),
    ``"frank_wolfe"`` (exact line search plus away steps, ``iters`` iterations), ``"enumerate"`` (exact, by
    KKT over all supports; K ≤ 12), ``"qp"`` (optional ``quadprog``/``qpsolvers``, an exact check).

    Degenerate inputs: rewards whose squared norm M_kk ≤ eps (zero gradient) are excluded and get α = 0;
    if all are zero, α is uniform. Returns float64 α of shape (K,) on M's device, summing to 1.
    """
    if method not in MIN_NORM_METHODS:
        raise ConfigError(f"unknown min_norm method {method!r}; valid: {choices(MIN_NORM_METHODS)}")
    m = torch.as_tensor(gram).detach().double()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"gram must be a square K×K matrix, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("gram matrix contains NaN/inf (a reward's gradient is not finite)")
    device = m.device
    m = 0.5 * (m + m.T).cpu()
    k = m.shape[0]
    alive = torch.diagonal(m) > eps
    alpha = torch.zeros(k, dtype=torch.float64)
    if not alive.any():
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
    idx = alive.nonzero().squeeze(1)
    ms = m[idx][:, idx]
    ka = ms.shape[0]
    if method == "closed_form" and k != 2:
        raise ConfigError(f"min_norm method 'closed_form' needs exactly 2 rewards, got {k}")
    if ka == 1:
        sub = torch.ones(1, dtype=torch.float64)
    elif method == "qp":
        sub = _qp_solver(ms)
    elif method == "enumerate":
        sub = _enumerate_supports(ms)
    elif ka == 2 and method in ("auto", "closed_form"):
        sub = _closed_form_2(ms)
    else:
        sub = _frank_wolfe(ms, iters, tol)
    alpha[idx] = sub
    return alpha.to(device)


# ---------------------------------------------------------------------------------------------- Gram
def _as_param_lists(grads: GradList) -> List[List[Optional[torch.Tensor]]]:
    if len(grads) == 0:
        raise ValueError("need at least one gradient")
    if all(isinstance(g, torch.Tensor) for g in grads):
        return [[g.reshape(-1)] for g in grads]  # type: ignore[union-attr]
    lists = [list(g) for g in grads]  # type: ignore[arg-type]
    n = len(lists[0])
    if any(len(g) != n for g in lists):
        raise ValueError("every reward's gradient list must have one entry per parameter")
    return lists


def _raw_gram(lists: List[List[Optional[torch.Tensor]]]) -> torch.Tensor:
    k = len(lists)
    n_params = len(lists[0])
    device = next((g.device for gl in lists for g in gl if g is not None), torch.device("cpu"))
    gram = torch.zeros(k, k, dtype=torch.float64, device=device)
    for p in range(n_params):
        present = [i for i in range(k) if lists[i][p] is not None]  # None = parameter unused by that loss
        if not present:
            continue
        mat = torch.stack([lists[i][p].reshape(-1).double() for i in present])  # type: ignore[union-attr]
        sub = mat @ mat.T
        ix = torch.tensor(present, device=device)
        gram[ix.unsqueeze(1), ix.unsqueeze(0)] += sub
    return gram


def gram_matrix(
    grads: GradList, normalize: bool = True, all_reduce: AllReduce = None, eps: float = 1e-12
) -> Tuple[torch.Tensor, torch.Tensor]:
    """K×K Gram matrix of per-reward gradients and their norms (float64).

    ``grads``: K flattened tensors, or K lists of per-parameter gradient tensors (``None`` entries are
    zeros). Dot products are accumulated per parameter in float64. ``all_reduce`` (optional) sums the
    raw K×K matrix across ranks — needed when each rank holds a shard of the gradients (FSDP/ZeRO), not
    for DDP's synchronised gradients (see module docstring). Norms are √diag of the reduced raw Gram.
    With ``normalize=True`` returns M_kl = ⟨ĝ_k, ĝ_l⟩ with ĝ = g/‖g‖; zero gradients give zero rows.
    """
    gram = _raw_gram(_as_param_lists(grads))
    if all_reduce is not None:
        gram = all_reduce(gram)
    norms = torch.diagonal(gram).clamp_min(0.0).sqrt()
    if not normalize:
        return gram, norms
    inv = torch.where(norms > eps, 1.0 / norms.clamp_min(eps), torch.zeros_like(norms))
    return gram * inv.unsqueeze(0) * inv.unsqueeze(1), norms


def combine(grads: GradList, alpha: torch.Tensor):
    """Σ_k α_k g_k, as one flat tensor (flat inputs) or a per-parameter list (list inputs; None stays None
    only if every reward's entry is None)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    if all(isinstance(g, torch.Tensor) for g in grads):
        out = sum(float(a) * g.float() for a, g in zip(alpha, grads))  # type: ignore[union-attr]
        return out
    lists = _as_param_lists(grads)
    result = []
    for p in range(len(lists[0])):
        acc = None
        for a, gl in zip(alpha, lists):
            if gl[p] is None:
                continue
            term = float(a) * gl[p].float()  # type: ignore[union-attr]
            acc = term if acc is None else acc + term
        result.append(acc)
    return result


def cosines_to_direction(grads: GradList, direction, all_reduce: AllReduce = None, eps: float = 1e-12) -> torch.Tensor:
    """cos(g_k, d) for each reward (for logging), d flat or per-parameter like ``grads``. The optional
    hook sums the (K+1)×(K+1) Gram of [g_1..g_K, d] across shards."""
    lists = _as_param_lists(grads)
    d_list = [direction.reshape(-1)] if isinstance(direction, torch.Tensor) else list(direction)
    if len(d_list) != len(lists[0]):
        raise ValueError("direction must have one entry per parameter, like grads")
    gram = _raw_gram(lists + [d_list])
    if all_reduce is not None:
        gram = all_reduce(gram)
    norms = torch.diagonal(gram).clamp_min(0.0).sqrt()
    k = len(lists)
    denom = (norms[:k] * norms[k]).clamp_min(eps)
    return torch.where(denom > eps, gram[:k, k] / denom, torch.zeros_like(denom))


def normalized_to_loss_weights(alpha: torch.Tensor, norms: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """α'_k ∝ α_k/‖g_k‖, renormalised onto the simplex ([R]/uncertain: whether MARBLE folds the
    normalisation into the loss weights like this; expose it behind an option).

    Σ_k α'_k g_k is parallel to d = Σ_k α_k ĝ_k, so training with r_mix = Σ α'_k r_k follows the min-norm
    direction of the *normalised* gradients. Zero-norm rewards get weight 0; if nothing is left, α is
    returned unchanged.
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    norms = torch.as_tensor(norms, dtype=torch.float64, device=alpha.device)
    w = torch.where(norms > eps, alpha / norms.clamp_min(eps), torch.zeros_like(alpha))
    total = w.sum()
    if total <= 0:
        return alpha.clone()
    return w / total


# ---------------------------------------------------------------------------------------- smoothing
class CoefficientSmoother:
    """EMA of the QP solution, refreshed every ``period`` steps: ᾱ ← ρ·ᾱ + (1−ρ)·α*.

    ``period`` (M) = 10 and ``rho`` (ρ) = 0.9 are genalign placeholders — **uncertain** (no published
    values). ``init``: ``"first"`` sets ᾱ = α* at the first refresh (default), ``"uniform"`` starts the EMA
    from 1/K (also uncertain). Between refreshes train with r_mix = Σ ᾱ_k r_k (:func:`mix_optimality`).
    """

    def __init__(self, num_rewards: int, period: int = 10, rho: float = 0.9, init: str = "first"):
        if num_rewards < 1:
            raise ConfigError(f"MARBLE needs at least one reward, got {num_rewards}")
        if period < 1:
            raise ConfigError(f"MARBLE refresh period must be >= 1, got {period}")
        if not 0.0 <= rho < 1.0:
            raise ConfigError(f"MARBLE rho must be in [0, 1), got {rho}")
        if init not in SMOOTHER_INITS:
            raise ConfigError(f"unknown MARBLE smoother init {init!r}; valid: {choices(SMOOTHER_INITS)}")
        self.num_rewards, self.period, self.rho, self.init = num_rewards, period, rho, init
        self.alpha = torch.full((num_rewards,), 1.0 / num_rewards, dtype=torch.float64)
        self.num_updates = 0

    def should_refresh(self, step: int) -> bool:
        """True on steps 0, M, 2M, … (when the K per-reward gradients should be recomputed)."""
        return step % self.period == 0

    def update(self, alpha_star: torch.Tensor) -> torch.Tensor:
        a = torch.as_tensor(alpha_star, dtype=torch.float64).detach().cpu().reshape(-1)
        if a.shape[0] != self.num_rewards:
            raise ValueError(f"alpha has {a.shape[0]} entries, expected {self.num_rewards}")
        if self.num_updates == 0 and self.init == "first":
            self.alpha = a.clone()
        else:
            self.alpha = self.rho * self.alpha + (1.0 - self.rho) * a
        self.alpha = self.alpha / self.alpha.sum()
        self.num_updates += 1
        return self.alpha.clone()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"alpha": self.alpha.clone(), "num_updates": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        a = torch.as_tensor(state["alpha"], dtype=torch.float64).reshape(-1)
        if a.shape[0] != self.num_rewards:
            raise GenalignError(f"MARBLE state has {a.shape[0]} coefficients, this run has {self.num_rewards} rewards")
        self.alpha = a.clone()
        self.num_updates = int(state["num_updates"])


# ------------------------------------------------------------------------------------- optimality
def per_reward_optimality(advantages: torch.Tensor, adv_clip_max: float = 5.0) -> torch.Tensor:
    """r_{k,i} = clip(A_{k,i}/A_max, −1, 1)/2 + ½ for advantages of shape (K, N); NaN → A = 0 → r = ½
    (genalign choice: a reward that does not apply to a prompt is neutral)."""
    a = torch.as_tensor(advantages)
    if a.ndim != 2:
        raise ValueError(f"per-reward advantages must have shape (K, N), got {tuple(a.shape)}")
    return nft_optimality(a, adv_clip_max)


def mix_optimality(r_per_reward: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """r_mix,i = Σ_k α_k r_{k,i} for r of shape (K, N) and α on the simplex (K,)."""
    r = torch.as_tensor(r_per_reward)
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=r.device)
    if alpha.shape[0] != r.shape[0]:
        raise ValueError(f"alpha has {alpha.shape[0]} entries for {r.shape[0]} rewards")
    if torch.any(alpha < -1e-9) or abs(float(alpha.sum()) - 1.0) > 1e-6:
        raise ValueError("mixing weights must lie on the simplex (the NFT loss is affine in r only then)")
    return (alpha.unsqueeze(1) * r.double()).sum(0).to(torch.float32)
