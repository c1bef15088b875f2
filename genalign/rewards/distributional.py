"""DRAGON's distributional rewards (arXiv 2504.15217; METHODS.md §6).

A distributional reward is an encoder E plus a reference (exemplar) set. Families:

* instance-to-set — ``centroid_similarity``: ``cos(E(x), mean_j E(ref_j))`` (scope ``sample``);
  ``exemplar_loglik``: the log-density of E(x) under the Gaussian fitted to the exemplar embeddings (the
  Gaussian the FD compares against; scope ``sample``; genalign's addition, not from the DRAGON paper);
  ``fd_contribution``: each sample's leave-one-out effect on the Fréchet distance of the batch to the
  exemplar set, ``FD(batch − x_i, ref) − FD(batch, ref)`` (scope ``set``: it depends on the batch).
* set-to-set — ``fd`` (reward ``−FD``), ``mmd`` (``−MMD²``, unbiased, KID kernel), ``vendi`` (Vendi score,
  no reference needed; ``per_prompt: true`` scores the diversity among each prompt's samples instead).
  Scope ``set``: per-sample scores are each sample's leave-one-out contribution to the set reward,
  ``R(batch) − R(batch − x_i)`` — positive when the sample helps — so they rank samples for DRAGON's D⁺/D⁻
  split. The set value itself is :meth:`SetReward.set_value`. Contributions need ≥ 3 samples.

Exemplars (:class:`ExemplarSet`) come from an image folder, an audio (.wav) folder, a tensor of samples, a
(N, D) tensor of embeddings, a ``.safetensors`` file of embeddings (key ``embeddings``), or — for cross-modal
encoders (CLIP, CLAP) — a text file of prompts / a list of strings, embedded with the text tower. Embeddings
of files are cached as safetensors under ``cache_dir`` keyed by a hash of the encoder id and the file list
(names, sizes, modification times).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError, GenalignError
from ..registry import REWARDS
from . import stats
from .base import Reward
from .encoders import AUDIO_EXTS, IMAGE_EXTS, Encoder, build_encoder, decode_image, decode_wav, encoder_modality

REFERENCE_KINDS = ("auto", "images", "audio", "text", "embeddings", "samples")


def default_cache_dir() -> str:
    return os.environ.get("GENALIGN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "genalign", "exemplars"))


def _write_embeddings(path: str, emb: torch.Tensor, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save

    from ..io import atomic_write_bytes

    atomic_write_bytes(path, save({"embeddings": emb.contiguous()}, metadata=metadata))


class ExemplarSet:
    """An encoder plus reference examples, with lazily computed (and cached) embeddings (M, D)."""

    def __init__(self, encoder: Union[str, Callable, Encoder], source: Any, kind: str = "auto",
                 encoder_args: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 32, image_size: Optional[int] = None, sample_rate: Optional[int] = None,
                 use_cache: bool = True):
        if kind not in REFERENCE_KINDS:
            raise ConfigError(f"unknown reference kind '{kind}'; valid choices: {', '.join(REFERENCE_KINDS)}")
        self.encoder = build_encoder(encoder, encoder_args)
        self.source = source
        self.kind = kind
        self.cache_dir = cache_dir or default_cache_dir()
        self.batch_size = int(batch_size)
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.use_cache = bool(use_cache)
        self._emb: Optional[torch.Tensor] = None
        self.cache_path: Optional[str] = None

    def to(self, device) -> "ExemplarSet":
        self.encoder.to(device)
        return self

    # -- encoding -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        out = [self.encoder(samples[i : i + self.batch_size]) for i in range(0, samples.shape[0], self.batch_size)]
        return torch.cat(out).detach().float().cpu()

    @torch.no_grad()
    def _encode_text(self, texts: List[str]) -> torch.Tensor:
        out = [self.encoder.encode_text(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return torch.cat(out).detach().float().cpu()

    def _resolve_kind(self) -> str:
        src, kind = self.source, self.kind
        if kind != "auto":
            return kind
        if torch.is_tensor(src):
            return "embeddings" if src.dim() == 2 else "samples"
        if isinstance(src, (list, tuple)):
            return "text"
        if isinstance(src, str):
            if os.path.isdir(src):
                files = self._files(src, IMAGE_EXTS + AUDIO_EXTS)
                if not files:
                    raise GenalignError(f"exemplar folder '{src}' has no image ({', '.join(IMAGE_EXTS)}) or "
                                        f"audio ({', '.join(AUDIO_EXTS)}) files")
                return "audio" if files[0].lower().endswith(AUDIO_EXTS) else "images"
            if src.endswith(".safetensors"):
                return "embeddings"
            if src.endswith((".txt", ".jsonl")):
                return "text"
            raise GenalignError(f"exemplar source '{src}' not found or of unknown type; valid: an image/audio folder, "
                                f"a .txt/.jsonl prompts file, a .safetensors embeddings file, a tensor or a list of strings")
        raise GenalignError(f"exemplar source of type {type(src).__name__} not supported")

    @staticmethod
    def _files(folder: str, exts) -> List[str]:
        return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(exts))

    def _cache_key(self, files: Sequence[str], extra: str = "") -> str:
        h = hashlib.sha256()
        h.update(str(getattr(self.encoder, "id", "encoder")).encode())
        h.update(extra.encode())
        for f in files:
            st = os.stat(f)
            h.update(f"\n{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:40]

    def _cached(self, files: Sequence[str], extra: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.use_cache:
            return compute()
        from safetensors.torch import load_file

        self.cache_path = os.path.join(self.cache_dir, self._cache_key(files, extra) + ".safetensors")
        if os.path.exists(self.cache_path):
            try:
                return load_file(self.cache_path)["embeddings"]
            except Exception:  # a corrupt cache entry is recomputed and rewritten
                pass
        emb = compute()
        _write_embeddings(self.cache_path, emb, {"encoder": str(getattr(self.encoder, "id", "")), "n": str(len(files))})
        return emb

    def save(self, path: str) -> Dict[str, str]:
        """Write the embeddings as a portable reference file (``.safetensors``, key ``embeddings``, written
        atomically) that any distributional reward takes as ``reference``. Returns the metadata stored with it."""
        emb = self.embeddings
        src = self.source
        ref = os.path.abspath(src) if isinstance(src, str) and os.path.exists(src) else str(src)
        meta = {"encoder": str(getattr(self.encoder, "id", "")), "reference": ref, "kind": self._resolve_kind(),
                "count": str(emb.shape[0])}
        _write_embeddings(path, emb, meta)
        return meta

    def _load_images(self, files: List[str]) -> torch.Tensor:
        imgs = []
        for f in files:
            with open(f, "rb") as fh:
                imgs.append(decode_image(fh.read(), f"exemplar image '{f}'"))
        h, w = (self.image_size, self.image_size) if self.image_size else imgs[0].shape[-2:]
        imgs = [im if im.shape[-2:] == (h, w) else
                F.interpolate(im[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
                for im in imgs]
        return torch.stack(imgs)

    def _encode_audio_files(self, files: List[str]) -> torch.Tensor:
        rows = []
        for f in files:
            with open(f, "rb") as fh:
                wav, sr = decode_wav(fh.read(), f"exemplar audio '{f}'")
            if self.sample_rate and sr != int(self.sample_rate):
                raise GenalignError(f"exemplar audio '{f}' has sample rate {sr}, expected {self.sample_rate}")
            rows.append(self.encode_samples(wav[None]))
        return torch.cat(rows)

    @property
    def embeddings(self) -> torch.Tensor:
        """(M, D) float32 reference embeddings (computed on first use)."""
        if self._emb is not None:
            return self._emb
        kind, src = self._resolve_kind(), self.source
        if kind == "embeddings":
            if torch.is_tensor(src):
                emb = src
            else:
                from safetensors.torch import load_file

                if not os.path.isfile(src):
                    raise GenalignError(f"exemplar embeddings file '{src}' not found")
                emb = load_file(src).get("embeddings")
                if emb is None:
                    raise GenalignError(f"exemplar embeddings file '{src}' has no 'embeddings' tensor")
        elif kind == "samples":
            if not torch.is_tensor(src):
                raise ConfigError("reference kind 'samples' needs a tensor of samples")
            emb = self.encode_samples(src)
        elif kind == "text":
            from ..io import read_prompts

            texts = read_prompts(src)
            files = [src] if isinstance(src, str) else []
            emb = self._cached(files, "text:" + "\n".join(texts), lambda: self._encode_text(texts)) if files \
                else self._encode_text(texts)
        elif kind in ("images", "audio"):
            if not isinstance(src, str) or not os.path.isdir(src):
                raise GenalignError(f"exemplar folder '{src}' does not exist")
            exts = IMAGE_EXTS if kind == "images" else AUDIO_EXTS
            files = self._files(src, exts)
            if not files:
                raise GenalignError(f"exemplar folder '{src}' has no {kind} files ({', '.join(exts)})")
            if kind == "images":
                emb = self._cached(files, f"images:{self.image_size}", lambda: self.encode_samples(self._load_images(files)))
            else:
                emb = self._cached(files, "audio", lambda: self._encode_audio_files(files))
        else:  # pragma: no cover - _resolve_kind returns only the kinds above
            raise ConfigError(f"unknown reference kind '{kind}'")
        emb = torch.as_tensor(emb).detach().float().cpu()
        if emb.dim() != 2 or emb.shape[0] < 1:
            raise GenalignError(f"exemplar embeddings must be (M >= 1, D), got shape {tuple(emb.shape)}")
        self._emb = emb
        return emb


class _DistributionalBase(Reward):
    """Shared construction: an encoder and (optionally) a reference set."""

    needs_reference = True
    modality = "any"  # the encoder's: an instance takes its encoder's modality

    @classmethod
    def declared_modality(cls, args=None) -> str:
        return encoder_modality((args or {}).get("encoder", "clip"))

    def __init__(self, encoder: Union[str, Callable] = "clip", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", cache_dir: Optional[str] = None, batch_size: int = 32,
                 image_size: Optional[int] = None, sample_rate: Optional[int] = None):
        super().__init__()
        if self.needs_reference and reference is None:
            raise ConfigError(f"reward '{self.registry_name}' needs reference: an image/audio folder, a prompts file, "
                              f"a .safetensors embeddings file or a tensor")
        self.exemplars = ExemplarSet(encoder, reference, reference_kind, encoder_args, cache_dir, batch_size,
                                     image_size, sample_rate)
        self.modality = getattr(self.exemplars.encoder, "modality", "any")

    def to(self, device):
        super().to(device)
        self.exemplars.to(device)
        return self

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        return self.exemplars.encode_samples(samples)


@REWARDS.register("centroid_similarity")
class CentroidSimilarityReward(_DistributionalBase):
    """``cos(E(x), mean_j E(ref_j))`` — instance-to-set similarity to the exemplar centroid, in [-1, 1]."""

    scope = "sample"

    def score(self, samples, prompts, metadata):
        e = self.embed(samples).double()
        c = self.exemplars.embeddings.double().mean(0, keepdim=True)
        return F.cosine_similarity(e, c, dim=-1).float()


@REWARDS.register("exemplar_loglik")
class ExemplarLogLikelihoodReward(_DistributionalBase):
    """Instance-to-set: ``log N(E(x); μ_ref, Σ_ref + λ·(tr Σ_ref / D)·I) / D`` — nats per embedding dimension.

    The Gaussian is the one the Fréchet distance fits to the exemplar set, so this is the single-sample view of
    "how exemplar-like is x": unlike ``centroid_similarity`` it weighs every direction by how much the exemplars
    vary along it (a direction along which all exemplars agree — stroke width, say — counts heavily).
    genalign's addition, not a reward of the DRAGON paper. ``shrinkage`` λ ridges the exemplar covariance
    (needed when there are fewer exemplars than dimensions, or the encoder's features are rank-deficient);
    default 0.1, chosen on the toy world, where it ranked samples by stroke width best (docs: README, DRAGON).
    """

    scope = "sample"

    def __init__(self, encoder: Union[str, Callable] = "clip", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", cache_dir: Optional[str] = None, batch_size: int = 32,
                 image_size: Optional[int] = None, sample_rate: Optional[int] = None,
                 shrinkage: float = 0.1):
        super().__init__(encoder, reference, encoder_args, reference_kind, cache_dir, batch_size, image_size, sample_rate)
        if not float(shrinkage) >= 0:
            raise ConfigError(f"reward 'exemplar_loglik': shrinkage must be >= 0, got {shrinkage}")
        self.shrinkage = float(shrinkage)
        self._stats = None

    def _gaussian(self):
        if self._stats is None:
            ref = self.exemplars.embeddings
            if ref.shape[0] < 2:
                raise GenalignError(f"reward '{self.name}' fits a Gaussian to the exemplars and needs at least 2, "
                                    f"got {ref.shape[0]}")
            mu, sigma = stats.mean_cov(ref)
            if self.shrinkage == 0 and torch.linalg.matrix_rank(sigma) < sigma.shape[0]:
                raise GenalignError(f"reward '{self.name}': the exemplar covariance is rank-deficient "
                                    f"({ref.shape[0]} exemplars, {ref.shape[1]} dims); set shrinkage > 0")
            if float(torch.trace(sigma)) <= 0:
                raise GenalignError(f"reward '{self.name}': all exemplar embeddings are identical")
            self._stats = (mu, sigma)
        return self._stats

    def score(self, samples, prompts, metadata):
        mu, sigma = self._gaussian()
        e = self.embed(samples)
        return (stats.gaussian_log_density(e, mu, sigma, self.shrinkage) / e.shape[1]).float().cpu()


class SetReward(_DistributionalBase):
    """A set-to-set reward R(batch, ref): :meth:`set_value` is R; per-sample scores are R(batch) − R(batch − i)."""

    scope = "set"

    def set_value_from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loo_values_from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ref(self) -> torch.Tensor:
        """Reference embeddings on the reward's device (set statistics run there: float64 eigensolvers)."""
        return self.exemplars.embeddings.to(self.device)

    def set_value(self, samples: torch.Tensor, prompts=None, metadata=None) -> torch.Tensor:
        """The set reward R(batch) as a float64 scalar tensor (prompts/metadata accepted, unused)."""
        with torch.no_grad():
            return self.set_value_from_embeddings(self.embed(samples).to(self.device)).cpu()

    def score(self, samples, prompts, metadata):
        n = samples.shape[0]
        if n < 3:
            raise GenalignError(f"reward '{self.name}' ranks samples by leave-one-out contribution and needs at least "
                                f"3 samples per set, got {n}")
        e = self.embed(samples).to(self.device)
        return (self.set_value_from_embeddings(e) - self.loo_values_from_embeddings(e)).float().cpu()


@REWARDS.register("fd")
class FrechetDistanceReward(SetReward):
    """``R = −FD(E(batch), E(ref))`` (FID/FAD-style). ``eps`` adds εI to both covariances (useful when n < D)."""

    def __init__(self, encoder: Union[str, Callable] = "clip", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", cache_dir: Optional[str] = None, batch_size: int = 32,
                 image_size: Optional[int] = None, sample_rate: Optional[int] = None,
                 eps: float = 0.0):
        super().__init__(encoder, reference, encoder_args, reference_kind, cache_dir, batch_size, image_size, sample_rate)
        self.eps = float(eps)

    def set_value_from_embeddings(self, e):
        return -stats.frechet_distance(e, self.ref(), eps=self.eps)

    def loo_values_from_embeddings(self, e):
        return -stats.frechet_distance_loo(e, self.ref(), eps=self.eps)


@REWARDS.register("fd_contribution")
class FdContributionReward(FrechetDistanceReward):
    """Instance-to-set view of the FD: each sample's leave-one-out effect ``FD(batch − i) − FD(batch)``.

    Numerically the per-sample scores of ``fd``; registered separately so recipes can name the family.
    """


@REWARDS.register("mmd")
class MMDReward(SetReward):
    """``R = −MMD²_unbiased(E(batch), E(ref))`` with the KID kernel ``(aᵀb/d + 1)³``."""

    def __init__(self, encoder: Union[str, Callable] = "clip", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", cache_dir: Optional[str] = None, batch_size: int = 32,
                 image_size: Optional[int] = None, sample_rate: Optional[int] = None,
                 degree: int = 3, coef0: float = 1.0):
        super().__init__(encoder, reference, encoder_args, reference_kind, cache_dir, batch_size, image_size, sample_rate)
        self.kernel = {"degree": int(degree), "coef0": float(coef0)}

    def set_value_from_embeddings(self, e):
        return -stats.mmd2_unbiased(e, self.ref(), **self.kernel)

    def loo_values_from_embeddings(self, e):
        return -stats.mmd2_unbiased_loo(e, self.ref(), **self.kernel)


@REWARDS.register("vendi")
class VendiReward(SetReward):
    """``R = Vendi(E(batch))`` with the cosine kernel (diversity; needs no reference set).

    ``per_prompt: true``: R = the mean over the P prompts of the Vendi score of that prompt's samples. A
    sample's score is still R(batch) − R(batch − i), which is its own group's Vendi change divided by P (0 for
    a prompt with a single sample). Whole-batch Vendi is dominated by the differences *between* prompts, so
    maximising it can reward samples that drift off their prompt; the per-prompt form asks for variety among
    the seeds of one prompt (mode collapse is per prompt). Needs ``data.group_size >= 2``. genalign's option, not from the paper.
    """

    needs_reference = False

    def __init__(self, encoder: Union[str, Callable] = "clip", reference: Any = None, encoder_args: Optional[dict] = None,
                 reference_kind: str = "auto", cache_dir: Optional[str] = None, batch_size: int = 32,
                 image_size: Optional[int] = None, sample_rate: Optional[int] = None,
                 per_prompt: bool = False):
        super().__init__(encoder, reference, encoder_args, reference_kind, cache_dir, batch_size, image_size, sample_rate)
        self.per_prompt = bool(per_prompt)

    def set_value_from_embeddings(self, e):
        return stats.vendi_score(e)

    def loo_values_from_embeddings(self, e):
        return stats.vendi_score_loo(e)

    def _groups(self, prompts, n: int) -> List[List[int]]:
        if prompts is None or len(prompts) != n:
            raise GenalignError(f"reward '{self.name}' with per_prompt needs one prompt per sample")
        out: Dict[str, List[int]] = {}
        for i, p in enumerate(prompts):
            out.setdefault(p, []).append(i)
        return list(out.values())

    def set_value(self, samples, prompts=None, metadata=None):
        if not self.per_prompt:
            return super().set_value(samples, prompts, metadata)
        with torch.no_grad():
            e = self.embed(samples).to(self.device)
            vals = [stats.vendi_score(e[idx]) for idx in self._groups(prompts, e.shape[0])]
            return torch.stack(vals).mean().cpu()

    def score(self, samples, prompts, metadata):
        if not self.per_prompt:
            return super().score(samples, prompts, metadata)
        e = self.embed(samples).to(self.device)
        out = torch.zeros(e.shape[0], dtype=torch.float64)
        groups = self._groups(prompts, e.shape[0])
        if max(len(g) for g in groups) < 2:
            raise GenalignError(f"reward '{self.name}' with per_prompt needs at least 2 samples per prompt "
                                f"(data.group_size >= 2)")
        for idx in groups:
            if len(idx) >= 2:
                sub = e[idx]
                out[idx] = (stats.vendi_score(sub) - stats.vendi_score_loo(sub)).cpu() / len(groups)
        return out.float()
