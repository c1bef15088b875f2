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


# ================================================================================================ trainer glue
from dataclasses import dataclass, field  # noqa: E402


import numpy as np  # noqa: E402

from genalign.algorithms.advantages import group_advantages  # noqa: E402
from genalign.algorithms.nft import NFT  # noqa: E402
from genalign.registry import ALGORITHMS  # noqa: E402

BALANCES = ("min_norm", "fixed")
LOSS_WEIGHTS = ("normalized", "alpha")


def _check_balancing_options(alg) -> None:
    """Validation shared by Marble and MarbleGRPO (refresh period, smoother, QP method, loss weights)."""
    if alg.period < 1:
        raise ConfigError(f"'algorithm.period' must be >= 1, got {alg.period}")
    if not 0.0 <= alg.rho < 1.0:
        raise ConfigError(f"'algorithm.rho' must be in [0, 1), got {alg.rho}")
    if alg.smoother_init not in SMOOTHER_INITS:
        raise ConfigError(f"'algorithm.smoother_init' is '{alg.smoother_init}'; valid choices: "
                          f"{choices(SMOOTHER_INITS)}")
    if alg.min_norm not in MIN_NORM_METHODS:
        raise ConfigError(f"'algorithm.min_norm' is '{alg.min_norm}'; valid choices: {choices(MIN_NORM_METHODS)}")
    if alg.loss_weights not in LOSS_WEIGHTS:
        raise ConfigError(f"'algorithm.loss_weights' is '{alg.loss_weights}'; valid choices: "
                          f"{choices(LOSS_WEIGHTS)}")


def _balance_step(alg, grads, stats_acc: Dict[str, list], all_reduce: AllReduce = None,
                  fixed: Optional[torch.Tensor] = None) -> list:
    """The refresh shared by Marble and MarbleGRPO: K per-reward gradients → normalised Gram → α* (QP) → smoothed
    ᾱ → loss weights w (stored in ``alg._w``) → the direction Σ_k w_k g_k (returned, per parameter), with its
    per-reward cosines. ``fixed`` weights replace the QP's (the equal-weight baseline). Logs the ``marble/*``
    statistics, including the cosine floor of the un-smoothed QP direction."""
    gram, norms = gram_matrix(grads, normalize=True, all_reduce=all_reduce)
    alpha_star = min_norm_coefficients(gram, alg.min_norm, iters=alg.fw_iters)
    if fixed is None:
        abar = alg._smoother.update(alpha_star)
        w = normalized_to_loss_weights(abar, norms) if alg.loss_weights == "normalized" else abar
    else:
        abar, w = fixed.clone(), fixed.clone()
    alg._w = w.double().cpu()
    direction = combine(grads, alg._w)
    cos = cosines_to_direction(grads, direction, all_reduce=all_reduce)
    names = alg._names
    for k, name in enumerate(names):
        stats_acc.setdefault(f"marble/alpha_{name}", []).append(float(abar[k]))
        stats_acc.setdefault(f"marble/alpha_star_{name}", []).append(float(alpha_star[k]))
        stats_acc.setdefault(f"marble/weight_{name}", []).append(float(alg._w[k]))
        stats_acc.setdefault(f"marble/cos_{name}", []).append(float(cos[k]))
        stats_acc.setdefault(f"marble/grad_norm_{name}", []).append(float(norms[k]))
        for l in range(k + 1, len(names)):
            stats_acc.setdefault(f"marble/gram_{k}{l}", []).append(float(gram[k, l]))
    stats_acc.setdefault("marble/min_cos", []).append(float(cos.min()))
    # the un-smoothed QP direction d* = Σ α*_k ĝ_k: cos(g_k, d*) = (Mα*)_k / √(α*ᵀMα*) ≥ √(α*ᵀMα*) ≥ 0
    a_s = alpha_star.double().cpu()
    m = gram.double().cpu()
    q = float(a_s @ m @ a_s)
    if q > 0:
        stats_acc.setdefault("marble/min_cos_qp", []).append(float((m @ a_s).min() / q**0.5))
    stats_acc.setdefault("marble/refresh", []).append(1.0)
    return direction


@ALGORITHMS.register("marble")
@dataclass
class Marble(NFT):
    """MARBLE (arXiv 2605.06507; METHODS.md §5) on DiffusionNFT, amortised.

    Advantages are per reward, (N, K): reward k's own group z-score (NaN → 0 → r = ½, neutral). Every
    ``period`` optimiser steps (a *refresh*), one forward per backward unit and K vector-Jacobian products give
    the per-reward gradients g_k = ∇L_NFT(θ; r_k) (synchronised across processes); their normalised Gram matrix
    gives α* = argmin_Δ αᵀMα, smoothed as ᾱ ← ρᾱ + (1−ρ)α*; the step applies Σ_k w_k g_k with w = ᾱ folded
    into loss weights (``loss_weights="normalized"``: w_k ∝ ᾱ_k/‖g_k‖, [R]/uncertain) — equal to ∇L(r_mix)
    because L_NFT is affine in r. Other steps run one pass with r_mix = Σ_k w_k r_k. Logged on refreshes:
    ``marble/alpha_<reward>``, ``marble/weight_<reward>``, ``marble/cos_<reward>`` (cosine of g_k with the applied
    direction), ``marble/min_cos``, ``marble/gram_<k><l>``.

    ``balance="fixed"`` is the equal-weight baseline with the same diagnostics: w = the rewards' config weights
    normalised onto the simplex, never updated (r_mix = the weighted mean of the per-reward r's), and per-reward
    gradients are still computed every ``period`` steps for the cosine logs.
    ``period`` M = 10 and ``rho`` ρ = 0.9 are genalign placeholders (no published values; uncertain).

    ``refresh_fraction`` f < 1 (a genalign option, not from the paper): the per-reward gradients of a refresh are
    estimated on a random f-share of each micro-batch (only their normalised Gram matrix and norms are used), then
    the step itself is one ordinary pass with r_mix on the whole batch under the new weights. A refresh then costs
    f·(F + K·B) + (F + B) instead of F + K·B, which is what keeps K = 3 near the single-reward cost. f = 1 (default)
    is the exact form above: the refresh step applies Σ_k w_k g_k from the full batch.
    """

    beta: float = field(default=0.1, metadata={"help": "NFT β (0.1 for multi-reward in DiffusionNFT)."})
    period: int = field(default=10, metadata={"help": "M: recompute the per-reward gradients every M steps [uncertain]."})
    rho: float = field(default=0.9, metadata={"help": "ρ: EMA of the QP solution [uncertain]."})
    smoother_init: str = field(default="first", metadata={"help": "Smoother start: first (ᾱ = first α*) | uniform."})
    min_norm: str = field(default="auto", metadata={"help": "QP solver: auto | closed_form | frank_wolfe | enumerate | qp."})
    fw_iters: int = field(default=50, metadata={"help": "Frank–Wolfe iterations (K > 2)."})
    loss_weights: str = field(default="normalized", metadata={"help": "normalized (w ∝ ᾱ/‖g‖) | alpha (w = ᾱ) [uncertain]."})
    balance: str = field(default="min_norm", metadata={"help": "min_norm (MARBLE) | fixed (equal-weight baseline)."})
    sharded_gradients: bool = field(default=False, metadata={"help": "FSDP/ZeRO shards: sum the Gram matrix over ranks."})
    refresh_fraction: float = field(default=1.0, metadata={"help": "Share of each micro-batch used to estimate the per-reward gradients on a refresh (1 = exact)."})

    def __post_init__(self):
        super().__post_init__()
        _check_balancing_options(self)
        if not 0.0 < self.refresh_fraction <= 1.0:
            raise ConfigError(f"'algorithm.refresh_fraction' must be in (0, 1], got {self.refresh_fraction}")
        if self.balance not in BALANCES:
            raise ConfigError(f"'algorithm.balance' is '{self.balance}'; valid choices: {choices(BALANCES)}")
        self._smoother: Optional[CoefficientSmoother] = None
        self._w: Optional[torch.Tensor] = None
        self._steps = 0  # optimiser steps taken by this algorithm (the refresh clock)

    def setup(self, view) -> None:
        super().setup(view)
        k = len(view.rewards)
        self._names = list(view.reward_names)
        self._smoother = CoefficientSmoother(k, self.period, self.rho, self.smoother_init)
        w = torch.tensor([max(float(r.weight), 0.0) for r in view.rewards], dtype=torch.float64)
        self._fixed = w / w.sum() if w.sum() > 0 else torch.full((k,), 1.0 / k, dtype=torch.float64)
        self._w = self._fixed.clone()

    # -------------------------------------------------------------------------------- advantages
    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        self._restore()
        cols, zs = [], []
        for k in range(per_reward.shape[1]):
            a, st = group_advantages(per_reward[:, k], group_ids, std=self.adv_std, eps=self.adv_eps,
                                     clip=self.adv_clip_max)
            cols.append(a)
            zs.append(st["zero_std_ratio"])
        adv = torch.stack(cols, 1)  # (N, K); NaN rewards already gave A = 0
        return adv, {"zero_std_ratio": float(np.mean(zs))}, torch.ones(adv.shape[0], dtype=torch.bool)

    # -------------------------------------------------------------------------------- update
    def objectives(self, view) -> int:
        """Called once per optimiser step: K on a refresh (every ``period`` steps), else 1 (one mixed pass)."""
        k = len(self._names) if self._steps % self.period == 0 else 1
        self._steps += 1
        return k

    @property
    def probe_fraction(self) -> float:
        return self.refresh_fraction

    def optimality(self, adv: torch.Tensor, probe: bool) -> List[torch.Tensor]:
        if adv.ndim != 2 or adv.shape[1] != len(self._names):
            raise GenalignError(f"MARBLE needs (N, {len(self._names)}) per-reward advantages, got {tuple(adv.shape)}")
        r_all = per_reward_optimality(adv.T, self.adv_clip_max)  # (K, n)
        return list(r_all) if probe else [mix_optimality(r_all, self._w)]

    def combine(self, view, grads, stats):
        """Gram → α* → smoothed weights; the exact refresh applies Σ_k w_k g_k, a ``refresh_fraction`` < 1 one
        returns None so that the step is an ordinary r_mix pass on the whole batch under the new weights."""
        hook = view.sum_hook() if self.sharded_gradients else None
        direction = _balance_step(self, grads, stats, hook, None if self.balance == "min_norm" else self._fixed)
        return direction if self.refresh_fraction >= 1.0 else None

    def after_iteration(self, view) -> Dict[str, float]:
        out = super().after_iteration(view)
        for k, name in enumerate(self._names):
            out[f"marble/mix_{name}"] = float(self._w[k])
        return out

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        sd = super().state_dict()
        sd.update({f"smoother.{k}": v for k, v in self._smoother.state_dict().items()})
        sd["mix_weights"] = self._w.clone()
        sd["steps"] = torch.tensor(self._steps)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        super().load_state_dict({k: v for k, v in sd.items() if not k.startswith("smoother.")})
        self._smoother.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("smoother.")})
        if "mix_weights" in sd:
            self._w = sd["mix_weights"].double().clone()
        self._steps = int(sd.get("steps", torch.tensor(0)))


from genalign.algorithms.grpo import GRPO  # noqa: E402


@ALGORITHMS.register("marble_grpo")
@dataclass
class MarbleGRPO(GRPO):
    """MARBLE's min-norm balancing on Flow-GRPO / Diffusion GRPO (genalign extension; METHODS.md §5 describes it on
    NFT only). Per-reward group advantages (N, K); on a refresh step (every ``period`` optimiser steps) the K
    per-reward PPO-clip gradients are computed by K accumulation passes (DDP-synchronised), the normalised Gram
    matrix gives α*, smoothed by ρ, and the step applies Σ_k w_k g_k (w ∝ ᾱ_k/‖g_k‖ with
    ``loss_weights="normalized"``). The PPO-clip loss is not affine in A, so the other steps use the mixed
    advantage A_mix = Σ_k w_k A_k in one pass — an approximation of Σ_k w_k ∇L(A_k) ([R]); ``period: 1`` makes
    every step exact at K× the backward cost. Logs as :class:`Marble` does.
    """

    period: int = field(default=1, metadata={"help": "Per-reward passes every M steps (1 = every step, exact)."})
    rho: float = field(default=0.9, metadata={"help": "ρ: EMA of the QP solution [uncertain]."})
    smoother_init: str = field(default="first", metadata={"help": "Smoother start: first | uniform."})
    min_norm: str = field(default="auto", metadata={"help": "QP solver: auto | closed_form | frank_wolfe | enumerate | qp."})
    fw_iters: int = field(default=50, metadata={"help": "Frank–Wolfe iterations (K > 2)."})
    loss_weights: str = field(default="normalized", metadata={"help": "normalized (w ∝ ᾱ/‖g‖) | alpha [uncertain]."})

    def __post_init__(self):
        super().__post_init__()
        _check_balancing_options(self)
        if self.adv_std == "buffer" or self.drop_zero_std_groups or self.best_of_n:
            raise ConfigError("marble_grpo supports adv_std global | group | batch, without drop_zero_std_groups "
                              "or best_of_n")
        self._steps = 0

    def setup(self, view) -> None:
        super().setup(view)
        k = len(view.rewards)
        self._names = list(view.reward_names)
        self._smoother = CoefficientSmoother(k, self.period, self.rho, self.smoother_init)
        self._w = torch.full((k,), 1.0 / k, dtype=torch.float64)

    def advantages(self, per_reward, weights, group_ids, prompts, mode):
        cols = [group_advantages(per_reward[:, k], group_ids, std=self.adv_std, eps=self.adv_eps,
                                 clip=self.adv_clip_max, unbiased=self.adv_unbiased_std)[0]
                for k in range(per_reward.shape[1])]
        adv = torch.stack(cols, 1)
        return adv, {"zero_std_ratio": 0.0}, torch.ones(adv.shape[0], dtype=torch.bool)

    def objectives(self, view) -> int:
        """Called once per optimiser step: K per-reward gradients on a refresh step, else one mixed pass."""
        k = len(self._names) if self._steps % self.period == 0 else 1
        self._steps += 1
        return k

    def mix(self, adv: torch.Tensor) -> torch.Tensor:
        return (adv.double() * self._w.unsqueeze(0)).sum(1).float()

    def combine(self, view, grads, stats):
        return _balance_step(self, grads, stats)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        sd = {f"smoother.{k}": v for k, v in self._smoother.state_dict().items()}
        sd["mix_weights"] = self._w.clone()
        sd["steps"] = torch.tensor(self._steps)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if any(k.startswith("smoother.") for k in sd):
            self._smoother.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("smoother.")})
        if "mix_weights" in sd:
            self._w = sd["mix_weights"].double().clone()
        self._steps = int(sd.get("steps", torch.tensor(0)))
