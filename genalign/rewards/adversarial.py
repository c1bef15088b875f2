"""Adv-GRPO's adversarial reward: the image judged by a discriminator trained during the run (arXiv 2511.20256,
``showlab/Adv-GRPO``; METHODS.md §7). Registered as ``adversarial``; a :class:`~genalign.rewards.base.LearnableReward`.

* A frozen token encoder (:mod:`genalign.rewards.token_encoders`: DINOv2, CLIP vision, or the toy digit
  classifier) gives a class token c and patch tokens p of one width D.
* The trained part ``discriminator`` is a small head D = MLP(D → ``hidden`` → GELU → 1) shared by the class token
  and by ``num_patches`` patch tokens drawn **with replacement, separately for every image** (references and
  generations alike), drawn again when rewarding — as the reference does.
* Hinge loss, references positive, current generations negative (``patch_loss_weight`` λ = 0.3):
  ``L_D = ½[E relu(1 − D(c_ref)) + E relu(1 + D(c_gen))] + λ·½[E relu(1 − D(p_ref)) + E relu(1 + D(p_gen))]``.
* Reward ``R = w·D(ĉ) + (1 − w)·mean_j D(p̂_j)`` with ``cls_weight`` w = 0.7.
* ``head: projection`` (not in the reference; a named option): a prompt-conditioned head, the projection
  discriminator of Miyato & Koyama (arXiv 1802.05637, eq. 3): ``D(x, y) = ψ(φ(x)) + ⟨e_y, φ(x)⟩`` with
  φ(x) = GELU(W₁x + b₁) the MLP's hidden layer, ψ its output layer and e_y a learned embedding of the sample's
  prompt (initialised to zero, so the head starts as the plain MLP). Needs per-prompt references (a ``.jsonl``):
  the prompts are its classes, a reference carries its sample's prompt, so D learns "a real y" vs "a generation
  for y" and a generation that drifts to another digit loses reward. The hinge loss and the reward are unchanged.
  ``ref_pool: all`` (with per-prompt references; not in the reference) draws every sample's references from the
  union of all prompts' sets, each reference labelled with its own prompt: the class-free part ψ then sees the
  pooled reference distribution (as with an image folder), the projection ⟨e_y, φ⟩ still ties a reference to its
  prompt. ``prompt`` (default): from the sample's prompt's set.
* **The reference's feature-normalisation quirk** (``feature_norm``): the reference code trains D on the
  *un-normalised* tokens but rewards with L2-normalised ones (``x / (‖x‖ + 1e-6)``), so the reward evaluates D
  off the distribution it was trained on. ``feature_norm: reference`` (default) reproduces that;
  ``normalized`` uses normalised tokens in both places and ``raw`` un-normalised tokens in both places.
  Measured on the toy (scripts/bench/adv_reward_probe.py): with the quirk the rewards barely vary (std 0.007 vs
  0.88 with ``raw``) and rank samples with Spearman 0.72 against the trained convention — combine it with other
  rewards only after normalising each (``reward_aggregation: normalize_then_sum``). On the toy world only ``raw``
  learned in the generator's budget (``normalized`` left the head at chance); configs/toy/adv_grpo.yaml uses it.
* Optimiser defaults in the part's :class:`~genalign.core.phases.PartSpec`: Adam, lr 1e-4, betas (0.5, 0.999),
  no weight decay (a config section ``train.parts.discriminator`` overrides them).

Schedules (:meth:`AdversarialReward.phases`):

* ``update_when: always`` with ``disc_steps_per_gen`` k > 0: k discriminator-only (``exclusive``) iterations,
  then one generator iteration — the reference's DINO schedule is k = 9 ("if (epoch+1) % 10 ≠ 0 update only D").
  Whether D also steps on the generator's iteration is ``disc_on_gen_iterations`` (default False [R]: the
  reference's loop is not restated here; METHODS §7 only pins the 9:1 ratio). k = 0: D steps on every iteration
  next to the generator.
* ``update_when: refs_below_gens`` (the reference's PickScore variant): D trains, and the generator skips,
  whenever the last scored batch had mean R(references) < mean R(generations). The means come from the last
  scoring (a reference batch is scored with the generations) or the last discriminator step (all-reduced), and
  are kept in :meth:`state_dict`. So that every process takes the same decision, the reward then has scope
  ``group`` (the trainer scores it on the gathered batch). Before any scores exist, D trains. k is not used.

Seeding: in a discriminator step every draw (a sample's references, its and their patch tokens) comes from the
sample's own seed (``rollout.seeds``, global) and how often it was visited in the iteration, so the draws do not
depend on how the batch is split across processes: two processes' averaged gradients equal one process's.
Scoring draws a sample's patches from (``seed``, iteration, the image's bytes): pure, position-independent.

The PickScore-style variant itself (a preference model with its last vision block trainable, pairwise
cross-entropy at lr 5e-6) is ``adversarial_pickscore`` (:mod:`genalign.rewards.adversarial_pickscore`).

Monitors (stats of every discriminator step, ``discriminator/disc/*``, on this process's shard before the step; and
:meth:`AdversarialReward.monitors`, which the trainer logs as ``monitor/<name>/disc/*`` on every iteration's gathered
generations after the discriminator's phase, generator iterations included, unless ``monitor: false``):
``disc/acc_ref`` and ``disc/acc_gen`` (fraction of class tokens on the right side of 0), ``disc/acc``,
``disc/reward_gap`` (mean R(ref) − mean R(gen), reward convention) and ``disc/fd`` (Fréchet distance between the
generations' and the references' class tokens, un-normalised, :func:`genalign.rewards.stats.frechet_distance`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.seeding import derive_seed, torch_generator
from ..errors import ConfigError, GenalignError
from ..registry import REWARDS
from . import stats
from .base import LearnableReward
from .token_encoders import References, _pick, build_token_encoder

FEATURE_NORMS = ("reference", "normalized", "raw")
UPDATE_WHEN = ("always", "refs_below_gens")
HEADS = ("mlp", "projection")
REF_POOLS = ("prompt", "all")
PART = "discriminator"
_SCORE, _TRAIN, _DECIDE, _HEAD, _MONITOR = 11, 12, 13, 14, 15  # seed streams


class DiscriminatorHead(nn.Module):
    """MLP(dim → hidden → GELU → 1), applied to the last axis: (..., dim) -> (...)."""

    def __init__(self, dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class ProjectionHead(DiscriminatorHead):
    """``D(x, y) = ψ(φ(x)) + ⟨e_y, φ(x)⟩`` (projection discriminator, arXiv 1802.05637 eq. 3): φ = the MLP's
    hidden layer + GELU, ψ = its output layer, e = an (num_classes, hidden) embedding initialised to zero.
    x (..., dim), y (...) class indices -> (...)."""

    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__(dim, hidden)
        self.embed = nn.Embedding(num_classes, hidden)
        nn.init.zeros_(self.embed.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net[1](self.net[0](x))
        return self.net[2](h).squeeze(-1) + (self.embed(y) * h).sum(-1)


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / (‖x‖ + eps)`` along the last axis (the reference's convention, eps outside the norm)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def sample_patches(patches: torch.Tensor, n: int, generator) -> torch.Tensor:
    """(B, P, D) -> (B, min(n, P), D): patch tokens drawn with replacement, separately for every image; ``generator``
    is one ``torch.Generator`` for the batch or a list with one per image (then a draw depends on its image only)."""
    b, p, d = patches.shape
    k = min(int(n), p)
    if isinstance(generator, (list, tuple)):
        idx = torch.stack([torch.randint(0, p, (k,), generator=g) for g in generator]) if b else \
            torch.zeros(0, k, dtype=torch.long)
    else:
        idx = torch.randint(0, p, (b, k), generator=generator)
    return torch.gather(patches, 1, idx.to(patches.device)[..., None].expand(-1, -1, d))


def content_seed(image: torch.Tensor, chunks: int = 16, levels: int = 16) -> int:
    """A seed from an image's content, so that scoring draws depend on the image and not on its place in a batch.

    It hashes a coarse summary: the means of ``chunks`` equal runs of the flattened image, rounded to 1/``levels``.
    Hashing the raw bytes (the first version) made the draws depend on the last bits of the pixels, which differ
    when the same images are decoded in batches of another size on some CPUs (seen on AMD EPYC: a one-process and a
    two-process run then drew different patches). Two images with the same summary share their draws, which is
    harmless: the draws are patch indices, not a source of variety between images."""
    import hashlib

    flat = image.detach().float().cpu().reshape(-1)
    means = torch.stack([c.mean() for c in flat.tensor_split(min(chunks, flat.numel()))]) if flat.numel() else flat
    data = torch.round(means.double() * levels).to(torch.int64).numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:7], "little")


def hinge_loss(d_ref_cls: torch.Tensor, d_gen_cls: torch.Tensor, d_ref_patch: Optional[torch.Tensor] = None,
               d_gen_patch: Optional[torch.Tensor] = None, patch_weight: float = 0.3) -> torch.Tensor:
    """Adv-GRPO's hinge discriminator loss (arXiv 2511.20256; METHODS §7), references positive:
    ``½[E relu(1 − D(c_ref)) + E relu(1 + D(c_gen))] + λ·½[E relu(1 − D(p_ref)) + E relu(1 + D(p_gen))]``."""
    loss = 0.5 * (F.relu(1 - d_ref_cls).mean() + F.relu(1 + d_gen_cls).mean())
    if patch_weight and d_ref_patch is not None:
        loss = loss + patch_weight * 0.5 * (F.relu(1 - d_ref_patch).mean() + F.relu(1 + d_gen_patch).mean())
    return loss


def combine_scores(cls_score: torch.Tensor, patch_scores: torch.Tensor, cls_weight: float = 0.7) -> torch.Tensor:
    """The reward ``w·D(c) + (1 − w)·mean_j D(p_j)``: (B,), (B, n) -> (B,)."""
    return cls_weight * cls_score + (1 - cls_weight) * patch_scores.mean(-1)


def _bad(name: str, value, valid) -> ConfigError:
    return ConfigError(f"reward 'adversarial': {name} is '{value}'; valid choices: {', '.join(valid)}")


class ScheduledReward(LearnableReward):
    """The schedules and the decision state shared by the adversarial rewards (one trained part, ``self.part``).

    ``update_when: always`` — ``disc_steps_per_gen`` k > 0: k part-only (exclusive) iterations, then a generator
    iteration (on which the part also steps when ``disc_on_gen_iterations``); k = 0: the part steps next to the
    generator every iteration. ``refs_below_gens`` — the part trains (and the generator skips) whenever the last
    scored batch had mean R(references) < mean R(generations), or before any were scored.
    """

    part = PART

    def _init_schedule(self, disc_steps_per_gen: int, disc_on_gen_iterations: bool, update_when: str) -> None:
        if update_when not in UPDATE_WHEN:
            raise _bad("update_when", update_when, UPDATE_WHEN)
        if int(disc_steps_per_gen) != disc_steps_per_gen or disc_steps_per_gen < 0:
            raise ConfigError(f"reward '{self.registry_name}': disc_steps_per_gen must be an integer >= 0, "
                              f"got {disc_steps_per_gen}")
        self.k, self.disc_on_gen, self.update_when = int(disc_steps_per_gen), bool(disc_on_gen_iterations), update_when
        # the decision must be the same on every process: score the gathered batch
        self.scope = "group" if update_when == "refs_below_gens" else "sample"
        self.iteration, self._calls = 0, 0
        self._last: Optional[Tuple[float, float]] = None  # (mean R(ref), mean R(gen)) of the last scored batch

    def phases(self, iteration: int) -> List[Any]:
        from ..core.phases import Phase

        self.iteration = int(iteration)
        solo = Phase((self.part,), needs=frozenset({"rollout"}), exclusive=True)
        if self.update_when == "refs_below_gens":
            return [solo] if self._last is None or self._last[0] < self._last[1] else []
        if self.k == 0:
            return [Phase((self.part,), needs=frozenset({"rollout"}))]
        if iteration % (self.k + 1) != self.k:
            return [solo]
        return [Phase((self.part,), needs=frozenset({"rollout"}))] if self.disc_on_gen else []

    def _sample_generators(self, view, rollout, idx: Sequence[int]) -> List[torch.Generator]:
        """One generator per sample of a loss unit, from the sample's own seed (``rollout.seeds``: global and
        independent of how the batch is split across processes) and how often it was visited this iteration —
        so a 2-process run draws what a 1-process run draws."""
        if int(view.iteration) != getattr(self, "_visits_of", None):  # visits count within one iteration
            self._visits_of, self._calls, self._visits = int(view.iteration), 0, {}
        self.iteration = int(view.iteration)
        self._calls += 1
        seeds = getattr(rollout, "seeds", None)
        out = []
        for i in idx:
            sd = int(seeds[i]) if seeds else derive_seed(view.seed(_TRAIN), view.rank, i)
            visit = self._visits.get(sd, 0)
            self._visits[sd] = visit + 1
            out.append(torch.Generator().manual_seed(derive_seed(sd, visit, _TRAIN)))
        return out

    def _record(self, view, ref_scores: torch.Tensor, gen_scores: torch.Tensor) -> None:
        """Keep the all-reduced means of a training unit's scores for the ``refs_below_gens`` decision."""
        if self.update_when != "refs_below_gens":
            return
        s = torch.tensor([float(ref_scores.double().sum()), len(ref_scores), float(gen_scores.double().sum()),
                          len(gen_scores)], dtype=torch.float64, device=view.device)
        s = view.all_reduce(s, "sum").cpu()
        self._last = (float(s[0] / s[1]), float(s[2] / s[3]))

    def state_dict(self) -> Dict[str, torch.Tensor]:
        last = self._last if self._last is not None else (float("nan"), float("nan"))
        return {"iteration": torch.tensor(self.iteration, dtype=torch.long),
                "calls": torch.tensor(self._calls, dtype=torch.long),
                "has_last": torch.tensor(self._last is not None),
                "last_means": torch.tensor(last, dtype=torch.float64)}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        self.iteration, self._calls = int(sd["iteration"]), int(sd["calls"])
        self._last = tuple(float(v) for v in sd["last_means"]) if bool(sd["has_last"]) else None


@REWARDS.register("adversarial")
class AdversarialReward(ScheduledReward):
    """The image as its own reward: a discriminator on frozen encoder tokens, trained against references.

    Args:
        encoder: ``dinov2`` (default), ``clip``, ``digits`` (toy) or a dotted path; ``encoder_args`` go to it
            (``model``, ``image_size``, ``dtype``).
        reference: an image folder, a ``.safetensors`` token file, or a ``.jsonl`` of ``{prompt, references}``
            (``reference_kind`` forces one: images, embeddings, per_prompt).
        refs_per_sample: references drawn for every generated sample in a discriminator step (1), from its
            metadata's ``references``, else its prompt's set, else the whole reference set.
        num_patches: patch tokens per image (64). cls_weight: w (0.7). patch_loss_weight: λ (0.3).
        hidden: head width (512). feature_norm: reference | normalized | raw (see the module docstring).
        head: ``mlp`` (the reference) or ``projection`` (prompt-conditioned; needs per-prompt references).
        ref_pool: ``prompt`` (a sample's references from its prompt's set) or ``all`` (from every prompt's set,
            labelled with their own prompts; per-prompt references only; metadata ``references`` are not used).
        lr, betas, weight_decay, max_grad_norm: the part's optimiser defaults (Adam, 1e-4, (0.5, 0.999), 0, none).
        disc_steps_per_gen: k discriminator-only iterations per generator iteration (reference 9; 0 = together).
        disc_on_gen_iterations: also step D on the generator's iterations (k > 0 only).
        update_when: always | refs_below_gens. seed: seeds the head's initialisation and the scoring draws
            (a scored image's patch draw depends on (seed, iteration, the image's bytes) only).
        monitor: log :meth:`monitors` of every iteration's generations (``monitor/<name>/disc/*``; True).
    """

    modality = "image"
    differentiable = False

    def __init__(self, encoder: Any = "dinov2", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", refs_per_sample: int = 1,
                 num_patches: int = 64, cls_weight: float = 0.7, patch_loss_weight: float = 0.3, hidden: int = 512,
                 feature_norm: str = "reference", lr: float = 1e-4, betas: Sequence[float] = (0.5, 0.999),
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None, disc_steps_per_gen: int = 9,
                 disc_on_gen_iterations: bool = False, update_when: str = "always", seed: int = 0,
                 monitor: bool = True, head: str = "mlp", ref_pool: str = "prompt"):
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise _bad("feature_norm", feature_norm, FEATURE_NORMS)
        if head not in HEADS:
            raise _bad("head", head, HEADS)
        if ref_pool not in REF_POOLS:
            raise _bad("ref_pool", ref_pool, REF_POOLS)
        self._init_schedule(disc_steps_per_gen, disc_on_gen_iterations, update_when)
        for name, v, lo in (("num_patches", num_patches, 1), ("refs_per_sample", refs_per_sample, 1),
                            ("hidden", hidden, 1)):
            if int(v) != v or v < lo:
                raise ConfigError(f"reward 'adversarial': {name} must be an integer >= {lo}, got {v}")
        if not 0.0 <= cls_weight <= 1.0 or patch_loss_weight < 0:
            raise ConfigError(f"reward 'adversarial': cls_weight must be in [0, 1] and patch_loss_weight >= 0, got "
                              f"{cls_weight}, {patch_loss_weight}")
        if len(betas) != 2 or lr <= 0:
            raise ConfigError(f"reward 'adversarial': lr must be > 0 and betas two numbers, got {lr}, {betas}")
        self.encoder = build_token_encoder(encoder, encoder_args)
        self.references = References(reference, reference_kind, self.encoder)
        if not self.references.has_patches and (cls_weight < 1 or patch_loss_weight > 0):
            raise ConfigError(f"reward 'adversarial': reference file '{reference}' has no 'patches' tensor; write one "
                              f"with save_reference_tokens, or set cls_weight: 1 and patch_loss_weight: 0")
        if head == "projection" and self.references.kind != "per_prompt":
            raise ConfigError(f"reward 'adversarial': head 'projection' needs per-prompt references (a .jsonl of "
                              f"{{prompt, references}}), got reference '{reference}' ({self.references.kind})")
        if ref_pool == "all" and self.references.kind != "per_prompt":
            raise ConfigError(f"reward 'adversarial': ref_pool 'all' needs per-prompt references (a .jsonl of "
                              f"{{prompt, references}}), got reference '{reference}' ({self.references.kind})")
        # the projection head's classes: the prompts of the reference file, in file order
        self.classes = {p: i for i, p in enumerate(self.references.by_prompt)} if head == "projection" else None
        # ref_pool 'all': every reference with its prompt
        self._pool = [(f, p) for p, fs in self.references.by_prompt.items() for f in fs] if ref_pool == "all" else None
        self.refs_per_sample, self.num_patches, self.hidden = int(refs_per_sample), int(num_patches), int(hidden)
        self.cls_weight, self.patch_loss_weight = float(cls_weight), float(patch_loss_weight)
        self.train_norm = feature_norm == "normalized"
        self.reward_norm = feature_norm != "raw"
        self.optim = dict(lr=float(lr), betas=tuple(float(b) for b in betas), weight_decay=float(weight_decay),
                          max_grad_norm=max_grad_norm)
        self.seed, self.monitor = int(seed), bool(monitor)
        self.head: Optional[DiscriminatorHead] = None

    # ------------------------------------------------------------------------------------------ the part
    def to(self, device):
        super().to(device)
        self.encoder.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def _ensure_head(self) -> DiscriminatorHead:
        if self.head is None:
            if self.references.kind == "embeddings":
                dim = int(self.references.cls.shape[1])
            else:
                dim = int(self.encoder.tokens(torch.full((1, 3, 32, 32), 0.5))[0].shape[1])
            with torch.random.fork_rng(devices=[]):  # the same initial head on every process and every run
                torch.manual_seed(derive_seed(self.seed, _HEAD))
                self.head = DiscriminatorHead(dim, self.hidden) if self.classes is None else \
                    ProjectionHead(dim, self.hidden, len(self.classes))
            self.head.to(self.device)
        return self.head

    def parts(self) -> Dict[str, Any]:
        from ..core.phases import PartSpec

        o = self.optim
        return {PART: PartSpec(self._ensure_head(), lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"],
                               max_grad_norm=o["max_grad_norm"])}

    # ------------------------------------------------------------------------------------------ scoring
    def _prep(self, x: torch.Tensor, normalise: bool) -> torch.Tensor:
        return l2_normalise(x) if normalise else x

    def labels(self, prompts: Sequence[str]) -> Optional[torch.Tensor]:
        """The projection head's class index of every prompt (None with the plain MLP head)."""
        if self.classes is None:
            return None
        missing = [p for p in prompts if p not in self.classes]
        if missing:
            raise GenalignError(f"reward 'adversarial' (head: projection): prompt '{str(missing[0])[:60]}' has no "
                                f"reference set; the per-prompt reference file has {len(self.classes)} prompts")
        return torch.tensor([self.classes[p] for p in prompts], dtype=torch.long)

    @staticmethod
    def _apply(head: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """``head(x)``, or ``head(x, y)`` with y broadcast over x's token axes (projection head)."""
        if y is None:
            return head(x)
        y = y.to(x.device)
        return head(x, y.view(*y.shape, *([1] * (x.dim() - 1 - y.dim()))).expand(x.shape[:-1]))

    @torch.no_grad()
    def _reward(self, cls: torch.Tensor, patches: Optional[torch.Tensor], generator,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """R for tokens (B, D), (B, P, D) (and class indices (B,) with the projection head) under the reward
        convention, with the unwrapped head."""
        head = self._ensure_head()
        dev = next(head.parameters()).device
        c = self._apply(head, self._prep(cls.to(dev), self.reward_norm), y)
        if patches is None:  # class-token-only references (cls_weight is 1, checked at construction)
            return c.float()
        p = self._prep(sample_patches(patches.to(dev), self.num_patches, generator), self.reward_norm)
        return combine_scores(c, self._apply(head, p, y), self.cls_weight).float()

    def score(self, samples, prompts, metadata):
        cls, patches = self.encoder.tokens(samples)
        gens = [torch_generator(self.seed, self.iteration, _SCORE, content_seed(x)) for x in samples]
        y = self.labels(prompts)
        r = self._reward(cls, patches, gens, y)
        if self.update_when == "refs_below_gens":
            g = torch_generator(self.seed, self.iteration, _DECIDE)  # the same on every process
            keys, ry, _ = self._pick_refs(g, prompts, metadata)
            rc, rp = self.references.tokens_of(keys)
            self._last = (float(self._reward(rc, rp, g, ry).double().mean()), float(r.double().mean()))
        return r.cpu()

    # ------------------------------------------------------------------------------------------ training
    def losses(self, view, batch, items) -> Iterator[Tuple[torch.Tensor, Dict[str, float]]]:
        ro = batch.rollout
        idx = torch.as_tensor(items, dtype=torch.long).flatten().tolist()
        gens = self._sample_generators(view, ro, idx)
        meta = [ro.metadata[i] for i in idx] if getattr(ro, "metadata", None) else None
        prompts = [ro.prompts[i] for i in idx]
        keys, *ys = self._pick_refs(gens, prompts, meta)
        ref_gens = [g for g in gens for _ in range(self.refs_per_sample)]  # a reference's patches: its sample's
        ref_c, ref_p = self.references.tokens_of(keys)
        gen_c, gen_p = self.encoder.tokens(ro.samples[idx])
        loss, out = self.discriminator_loss(view.module(PART), ref_c, ref_p, gen_c, gen_p, ref_gens, gens, view.device,
                                            *ys)
        out.update(self._monitor(ref_c, ref_p, gen_c, gen_p, ref_gens, gens, *ys))
        self._record(view, out.pop("_r_ref"), out.pop("_r_gen"))
        yield loss, out

    def _pick_refs(self, generators, prompts: Sequence[str], metadata=None):
        """(reference keys, their labels, the samples' labels): ``refs_per_sample`` references per sample, drawn
        with its generator (or one shared); a reference's label is its sample's prompt's, or with ``ref_pool:
        all`` its own prompt's (labels are None with the plain head)."""
        y = self.labels(prompts)
        if self._pool is None:
            keys = self.references.pick_all(generators, self.refs_per_sample, prompts, metadata)
            return keys, None if y is None else y.repeat_interleave(self.refs_per_sample), y
        picked = []
        for i in range(len(prompts)):
            g = generators[i] if isinstance(generators, (list, tuple)) else generators
            picked += [self._pool[j] for j in _pick(g, len(self._pool), self.refs_per_sample).tolist()]
        keys = [f for f, _ in picked]
        return keys, None if y is None else self.labels([p for _, p in picked]), y

    def discriminator_loss(self, head: nn.Module, ref_c, ref_p, gen_c, gen_p, ref_generator, gen_generator,
                           device=None, ref_y: Optional[torch.Tensor] = None,
                           gen_y: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The hinge loss of ``head`` on one reference batch and one generation batch (tokens), with the patch
        draws from the generators (see :func:`sample_patches`); one forward through ``head`` (so distributed hooks
        fire once). ``ref_y``/``gen_y``: class indices for the projection head."""
        device = device if device is not None else next(head.parameters()).device
        use_patches = self.patch_loss_weight > 0 and ref_p is not None
        rows = [ref_c, gen_c]
        if use_patches:
            rows += [sample_patches(ref_p, self.num_patches, ref_generator).flatten(0, 1),
                     sample_patches(gen_p, self.num_patches, gen_generator).flatten(0, 1)]
        sizes = [r.shape[0] for r in rows]
        y = None
        if ref_y is not None:
            ys = [ref_y, gen_y] + ([ref_y.repeat_interleave(rows[2].shape[0] // max(len(ref_y), 1)),
                                    gen_y.repeat_interleave(rows[3].shape[0] // max(len(gen_y), 1))]
                                   if use_patches else [])
            y = torch.cat(ys)
        d = self._apply(head, self._prep(torch.cat(rows).to(device).float(), self.train_norm), y)
        parts = torch.split(d, sizes)
        loss = hinge_loss(parts[0], parts[1], *(parts[2:] if use_patches else (None, None)),
                          patch_weight=self.patch_loss_weight if use_patches else 0.0)
        acc_ref = float((parts[0] > 0).float().mean())
        acc_gen = float((parts[1] < 0).float().mean())
        n_r, n_g = sizes[0], sizes[1]
        return loss, {"disc/loss": float(loss.detach()), "disc/acc_ref": acc_ref, "disc/acc_gen": acc_gen,
                      "disc/acc": (acc_ref * n_r + acc_gen * n_g) / (n_r + n_g)}

    @torch.no_grad()
    def _monitor(self, ref_c, ref_p, gen_c, gen_p, ref_generator, gen_generator, ref_y=None,
                 gen_y=None) -> Dict[str, float]:
        r_ref = self._reward(ref_c, ref_p, ref_generator, ref_y)
        r_gen = self._reward(gen_c, gen_p if ref_p is not None else None, gen_generator, gen_y)
        out = {"disc/reward_gap": float(r_ref.mean() - r_gen.mean()), "disc/reward_ref": float(r_ref.mean()),
               "disc/reward_gen": float(r_gen.mean()),
               "_r_ref": r_ref, "_r_gen": r_gen}
        if len(ref_c) >= 2 and len(gen_c) >= 2:
            out["disc/fd"] = float(stats.frechet_distance(gen_c, ref_c))
        return out

    @torch.no_grad()
    def monitors(self, samples: torch.Tensor, prompts: Sequence[str],
                 metadata: Optional[Sequence[dict]] = None) -> Dict[str, float]:
        """Accuracy, reward gap and FD of ``samples`` against ``refs_per_sample`` references each (seeded draws)."""
        gens = [torch_generator(self.seed, self.iteration, _MONITOR, content_seed(x)) for x in samples]
        keys, *ys = self._pick_refs(gens, prompts, metadata)
        ref_gens = [g for g in gens for _ in range(self.refs_per_sample)]
        ref_c, ref_p = self.references.tokens_of(keys)
        gen_c, gen_p = self.encoder.tokens(samples)
        _, out = self.discriminator_loss(self._ensure_head(), ref_c, ref_p, gen_c, gen_p, ref_gens, gens, None, *ys)
        out.update(self._monitor(ref_c, ref_p, gen_c, gen_p, ref_gens, gens, *ys))
        return {k: v for k, v in out.items() if not k.startswith("_")}
