"""DMD and DMD2 as pure tensor functions (METHODS.md §8).

Sources: Yin et al., "One-step Diffusion with Distribution Matching Distillation", arXiv 2311.18828 (DMD);
Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis", arXiv 2405.14867 (DMD2);
facts checked against ``tianweiy/DMD2: main/sd_guidance.py, main/sd_unified_model.py``.

Nothing here touches a trainer, an accelerator or an optimiser. The caller runs the networks:

* generator phase: ``x = G(z)`` (with grad); re-noise ``x_t`` without grad at ``t`` (:func:`sample_dmd_timesteps`);
  the teacher (CFG applied by the caller) and the fake score predict at ``(x_t, t)``; convert both to x̂0
  (:func:`to_x0`); ``loss, g = dmd_loss(x, x0_real, x0_fake)``; optionally ``+ λ_G·gan_generator_loss(D(x))``.
* fake-score phase: ``fake_score_loss(pred, target)`` with the target from the model adapter's noise law
  (ε, v = ε − x0 for flow, or VP v) and ``+ λ_D·gan_discriminator_loss(D(real), D(fake))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from genalign.algorithms import conversions as cv
from genalign.errors import ConfigError, choices

# DMD2 student timestep lists (diffusers discrete timesteps, T = 1000), as data. ``sd_unified_model.py`` builds
# them as range(T−1, 0, −T//K); the 1-step SDXL student instead conditions on t = 399 (``conditioning_timestep``).
DMD2_STUDENT_TIMESTEPS: Dict[str, Tuple[int, ...]] = {
    "4step": (999, 749, 499, 249),  # SD1.5 / SDXL 4-step; = LCMScheduler(timesteps=[999, 749, 499, 249])
    "1step": (999,),
    "sdxl_1step": (399,),
}
PARAMETERISATIONS = ("flow", "epsilon", "v_prediction", "sample")
REGRESSION_DISTANCES = ("mse", "pseudo_huber")
GAN_HEAD_KINDS = ("conv", "tokens")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k} {s}" for k, s in shapes.items()))


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


# ---------------------------------------------------------------------------------------- conversions
def to_x0(pred: torch.Tensor, x_t: torch.Tensor, parameterisation: str, sigma=None, alpha=None) -> torch.Tensor:
    """x̂0 from a model output (METHODS §1): ``flow`` (v, needs ``sigma``) or a VP ``epsilon`` /
    ``v_prediction`` / ``sample`` output (needs ``alpha`` = α_t and ``sigma`` = σ_t). DMD works on x̂0 only."""
    _check_same_shape(pred=pred, x_t=x_t)
    if parameterisation not in PARAMETERISATIONS:
        raise ConfigError(f"unknown parameterisation {parameterisation!r}; valid: {choices(PARAMETERISATIONS)}")
    if sigma is None or (parameterisation != "flow" and alpha is None):
        need = "sigma" if parameterisation == "flow" else "sigma and alpha"
        raise ValueError(f"to_x0({parameterisation!r}) needs {need}")
    if parameterisation == "flow":
        return cv.flow_x0_from_v(x_t, pred, sigma)
    return cv.vp_pred_to_x0_eps(pred, x_t, alpha, sigma, parameterisation)[0]


# ------------------------------------------------------------------------------------ DM surrogate
def dmd_gradient(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, normaliser_eps: float = 0.0
) -> torch.Tensor:
    """DMD2 normalised distribution-matching gradient (DMD Eq. 7–8; ``compute_distribution_matching_loss``):

        g = (x̂0_fake − x̂0_real) / mean_{CHW}|x − x̂0_real|      (per sample, then nan_to_num)

    Formed in float64 without grad, as the reference does. ``normaliser_eps`` = 0 is the reference (no epsilon:
    x̂0_real ≡ x gives ±max-float after nan_to_num); a positive value is genalign's named guard."""
    _check_same_shape(x=x, x0_real=x0_real, x0_fake=x0_fake)
    if normaliser_eps < 0:
        raise ValueError(f"normaliser_eps must be >= 0, got {normaliser_eps}")
    with torch.no_grad():
        xd, real, fake = x.detach().double(), x0_real.detach().double(), x0_fake.detach().double()
        norm = (xd - real).abs().flatten(1).mean(1).reshape(-1, *([1] * (x.ndim - 1))) + normaliser_eps
        return torch.nan_to_num((fake - real) / norm)


def surrogate_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½·mean((x − sg(x − g))²): a scalar whose gradient w.r.t. x is exactly g / x.numel() (DMD2's trick to feed a
    precomputed gradient through autograd). float32 unless x is float64."""
    _check_same_shape(x=x, g=g)
    xf = cv.as_float(x)
    return 0.5 * F.mse_loss(xf, (xf - g.to(xf.dtype)).detach(), reduction="mean")


def dmd_loss(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, normaliser_eps: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """DMD2 generator loss L_DM = ½·mean(x − sg(x − g))² with g from :func:`dmd_gradient`. Returns (loss, g);
    ∂L/∂x = g / numel. ``x`` is the student's x̂0 with grad; ``x0_real`` the teacher's x̂0 with CFG applied by the
    caller; ``x0_fake`` the fake score's x̂0 (guidance 1), both at the same re-noised (x_t, t)."""
    g = dmd_gradient(x, x0_real, x0_fake, normaliser_eps)
    return surrogate_loss(x, g), g


def sample_dmd_timesteps(
    n: int, generator: Optional[torch.Generator] = None, min_frac: float = 0.02, max_frac: float = 0.98,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Integer t ~ U{⌊min_frac·T⌋ .. ⌊max_frac·T⌋} (inclusive, capped at T−1), DMD2's generator-loss times."""
    lo, hi = int(min_frac * num_train_timesteps), int(max_frac * num_train_timesteps)
    hi = min(hi + 1, num_train_timesteps)
    if not 0 <= lo < hi:
        raise ValueError(f"empty timestep range: min_frac={min_frac}, max_frac={max_frac}")
    return torch.randint(lo, hi, (n,), generator=generator)


def sample_logit_normal_sigma(
    n: int, generator: Optional[torch.Generator] = None, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """σ = sigmoid(m + s·z), z ~ N(0, 1): RTDMD's fake-score time law (logit-normal(0, 1))."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


# ------------------------------------------------------------------------------------ fake score loss
def fake_score_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Denoising loss of the fake score, parameterisation-agnostic: mean_i w_i·mean_d (pred − target)².

    The target comes from the adapter's noise law: ε for ε-models, v = α ε − σ x0 for VP v-models, v = ε − x0 for
    flow (DMD §3.2; DMD2 ``compute_loss_fake``). ``weight`` (N,) defaults to 1 (e.g. RTDMD's min(1, 10σ_ts²))."""
    _check_same_shape(pred=pred, target=target)
    per = _per_sample_mean((cv.as_float(pred) - cv.as_float(target).detach()) ** 2)
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=per.dtype, device=per.device)
        if weight.shape != per.shape:
            raise ValueError(f"weight must have shape {tuple(per.shape)}, got {tuple(weight.shape)}")
        per = per * weight
    return per.mean()


def fake_score_target(x0: torch.Tensor, noise: torch.Tensor, parameterisation: str, sigma=None, alpha=None):
    """Convenience target when the caller has no noise-law object: flow v = ε − x0, or the VP target of the given
    prediction type (needs ``alpha``, ``sigma``)."""
    _check_same_shape(x0=x0, noise=noise)
    if parameterisation not in PARAMETERISATIONS:
        raise ConfigError(f"unknown parameterisation {parameterisation!r}; valid: {choices(PARAMETERISATIONS)}")
    if parameterisation == "flow":
        return cv.flow_target(x0, noise)
    if alpha is None or sigma is None:
        raise ValueError(f"fake_score_target({parameterisation!r}) needs alpha and sigma")
    return cv.vp_target(x0, noise, alpha, sigma, parameterisation)


# ---------------------------------------------------------------------------------------------- GAN
def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """L_D = E softplus(D(x_gen)) + E softplus(−D(x_real)) (non-saturating GAN; DMD2 §4.3,
    ``compute_guidance_clean_cls_loss``). Pass detached generator samples' logits."""
    return F.softplus(cv.as_float(logits_fake)).mean() + F.softplus(-cv.as_float(logits_real)).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_G = E softplus(−D(G(z))) (DMD2 ``compute_generator_clean_cls_loss``)."""
    return F.softplus(-cv.as_float(logits_fake)).mean()


class GANHead(nn.Module):
    """A small classifier giving one realism logit per sample from the **fake score's** features (DMD2
    ``cls_pred_branch``).

    * ``kind="conv"``, feature map (N, C, H, W) (UNet bottleneck): ``num_down`` × [4×4 stride-2 conv, GroupNorm,
      SiLU], global average pool, 1×1 conv to one logit (DMD2 ends with a stride-4 conv to 1×1 instead of the pool;
      the pool accepts any H, W ≥ 2^num_down).
    * ``kind="tokens"``, token sequence (N, L, C) (transformer backbones): LayerNorm, Linear, SiLU, mean over
      tokens, Linear → logit.
    Only the chosen branch has parameters (DDP needs every parameter used). Returns logits of shape (N,).
    """

    def __init__(self, in_channels: int, kind: str = "conv", hidden: Optional[int] = None, num_down: int = 2,
                 groups: int = 32):
        super().__init__()
        if kind not in GAN_HEAD_KINDS:
            raise ConfigError(f"unknown GANHead kind {kind!r}; valid: {choices(GAN_HEAD_KINDS)}")
        if in_channels <= 0 or num_down < 0:
            raise ValueError(f"GANHead needs in_channels > 0 and num_down >= 0, got {in_channels}, {num_down}")
        hidden = hidden or in_channels
        self.kind, self.in_channels, self.num_down = kind, in_channels, num_down
        if kind == "tokens":
            self.body = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.SiLU())
            self.out = nn.Linear(hidden, 1)
            return
        # GroupNorm groups: DMD2's 32 for wide features, fewer for narrow ones so each group keeps >= 8 channels
        # (one channel per group would be instance norm, which erases a per-channel mean shift).
        groups = math.gcd(min(groups, max(1, hidden // 8)), hidden)
        layers, c = [], in_channels
        for _ in range(num_down):
            layers += [nn.Conv2d(c, hidden, 4, stride=2, padding=1), nn.GroupNorm(groups, hidden), nn.SiLU()]
            c = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv" and features.ndim == 4:
            if features.shape[1] != self.in_channels:
                raise ValueError(f"GANHead expects {self.in_channels} channels, got features {tuple(features.shape)}")
            if min(features.shape[-2:]) < 2**self.num_down:
                raise ValueError(f"GANHead with num_down={self.num_down} needs H, W >= {2 ** self.num_down}, "
                                 f"got {tuple(features.shape)}")
            h = self.body(features.float())
            return self.out(h.mean(dim=(2, 3), keepdim=True)).flatten()
        if self.kind == "tokens" and features.ndim == 3:
            if features.shape[-1] != self.in_channels:
                raise ValueError(f"GANHead expects tokens of width {self.in_channels}, got {tuple(features.shape)}")
            return self.out(self.body(features.float()).mean(1)).flatten()
        want = "(N, C, H, W)" if self.kind == "conv" else "(N, L, C)"
        raise ValueError(f"GANHead(kind={self.kind!r}) takes {want} features, got shape {tuple(features.shape)}")


# ------------------------------------------------------------------------------- backward simulation
def dmd2_student_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> Tuple[int, ...]:
    """range(T−1, 0, −T//K) as in DMD2 ``sd_unified_model.py``: K=4 → (999, 749, 499, 249); K=1 → (999,)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    return tuple(range(num_train_timesteps - 1, 0, -(num_train_timesteps // num_steps)))


@dataclass(frozen=True)
class BackwardSimPlan:
    """What one DMD2 backward-simulation iteration does (``sample_backward``).

    ``sim_steps``: (t_i, t_{i+1}) for the k generator steps run **without** grad — predict x̂0 at t_i, re-noise it
    with fresh noise to t_{i+1}. ``train_timestep``: t_k, where the generator step with grad runs.
    ``from_pure_noise``: k = 0, the trained input is pure noise (DMD2 also forces pure noise at t = T−1)."""

    k: int
    sim_steps: Tuple[Tuple[int, int], ...]
    train_timestep: int
    from_pure_noise: bool


def backward_simulation_plan(
    timesteps: Sequence[int], k: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> BackwardSimPlan:
    """Plan for ``timesteps`` (high → low). k ~ U{0..K−1} from ``generator`` when not given: seed the generator
    identically on every rank (or broadcast k) so one k holds for the global batch (DMD2 broadcasts from rank 0)."""
    ts = [int(t) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be a non-empty strictly decreasing list, got {ts}")
    if k is None:
        k = int(torch.randint(0, len(ts), (1,), generator=generator))
    if not 0 <= k < len(ts):
        raise ValueError(f"k must be in [0, {len(ts) - 1}], got {k}")
    return BackwardSimPlan(k, tuple((ts[i], ts[i + 1]) for i in range(k)), ts[k], k == 0)


def run_backward_simulation(
    plan: BackwardSimPlan,
    x_init: torch.Tensor,
    predict_x0: Callable[[torch.Tensor, int], torch.Tensor],
    renoise: Callable[[torch.Tensor, int], torch.Tensor],
) -> Tuple[torch.Tensor, int]:
    """Run the plan's no-grad steps: x ← renoise(predict_x0(x, t_i), t_{i+1}) (``renoise`` draws **fresh**
    noise each call: correlated noise gives artifacts). Returns (state to train on at t_k, t_k)."""
    x = x_init
    with torch.no_grad():
        for t, t_next in plan.sim_steps:
            x = renoise(predict_x0(x, t), t_next)
    return x.detach(), plan.train_timestep


# ----------------------------------------------------------------------------------- DMD v1 regression
def pseudo_huber_c(numel_per_sample: int) -> float:
    """c = 0.00054·√d (Song & Dhariwal, "Improved Techniques for Training Consistency Models", arXiv 2310.14189
    §3.3). At d = 3072 (CIFAR-10 pixels) this is the familiar c ≈ 0.03; it is *not* 0.03·√d."""
    return 0.00054 * math.sqrt(numel_per_sample)


def regression_loss(
    student: torch.Tensor, teacher_ode: torch.Tensor, distance: str = "pseudo_huber", c: Optional[float] = None
) -> torch.Tensor:
    """DMD v1 regression L_reg = mean_i d(G(z_i), y_i), y = the teacher's deterministic ODE output from the same z
    (DMD Eq. 9; λ_reg = 0.25). DMD uses LPIPS, which needs downloaded VGG weights, so genalign offers:

    * ``pseudo_huber`` (default): √(‖x − y‖₂² + c²) − c per sample, c = :func:`pseudo_huber_c` (d) unless given —
      the weight-free LPIPS replacement of iCT: quadratic near 0, L2-like (robust) for large errors;
    * ``mse``: mean_d (x − y)² per sample.
    Latent-space inputs have a different scale than pixels: override ``c`` when needed."""
    _check_same_shape(student=student, teacher_ode=teacher_ode)
    if distance not in REGRESSION_DISTANCES:
        raise ConfigError(f"unknown regression distance {distance!r}; valid: {choices(REGRESSION_DISTANCES)}")
    diff = cv.as_float(student) - cv.as_float(teacher_ode).detach()
    if distance == "mse":
        return _per_sample_mean(diff**2).mean()
    c = pseudo_huber_c(diff[0].numel()) if c is None else float(c)
    if c <= 0:
        raise ValueError(f"pseudo_huber c must be > 0, got {c}")
    return (torch.sqrt((diff**2).flatten(1).sum(1) + c * c) - c).mean()
