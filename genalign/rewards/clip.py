"""CLIP-family rewards and the shared, differentiable image preprocessing of the reward zoo.

* ``clip_score`` — ``scale · cos(E_img(x), E_txt(prompt))`` with a transformers ``CLIPModel``
  (default ``openai/clip-vit-large-patch14``). ``scale`` = 1 gives the raw cosine; CLIPScore
  (Hessel et al., arXiv 2104.08718) uses ``2.5 · max(cos, 0)`` — set ``scale: 2.5, clamp_min: 0``.
* ``pickscore`` — PickScore (Kirstain et al., arXiv 2305.01569): ``logit_scale.exp() · cos`` with the
  ``yuvalkirstain/PickScore_v1`` CLIPModel and the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor.

Images go through the CLIP image processor's steps re-done in torch (resize the shortest edge with bicubic
interpolation, centre crop, normalise), so the score is differentiable with respect to the pixels. The
processor's sizes/mean/std are read from its ``preprocessor_config.json`` when present.

Weights load lazily on the first call, by hub id or local path, on the device given by ``to(device)``;
with ``HF_HUB_OFFLINE=1`` a hub id must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..registry import REWARDS
from .base import Reward

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------
# preprocessing


@dataclass
class ImagePreprocess:
    """Resize (shortest edge) → centre crop → normalise, all in torch (differentiable)."""

    size: int = 224  # shortest edge after resizing
    crop: int = 224  # square crop
    mean: Tuple[float, ...] = OPENAI_CLIP_MEAN
    std: Tuple[float, ...] = OPENAI_CLIP_STD
    mode: str = "bicubic"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if (h, w) != (self.crop, self.crop) or min(h, w) != self.size:
            s = self.size / min(h, w)
            nh, nw = max(self.crop, round(h * s)), max(self.crop, round(w * s))
            if (nh, nw) != (h, w):
                images = F.interpolate(images, size=(nh, nw), mode=self.mode, align_corners=False,
                                       antialias=self.mode in ("bilinear", "bicubic"))
            top, left = (images.shape[-2] - self.crop) // 2, (images.shape[-1] - self.crop) // 2
            images = images[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def _size_value(v, default: int) -> int:
    if isinstance(v, dict):
        for k in ("shortest_edge", "height", "width"):
            if k in v:
                return int(v[k])
        return default
    return int(v) if v is not None else default


def preprocess_from_config(path: str, default_size: int, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> ImagePreprocess:
    """Read ``preprocessor_config.json`` from a local dir (or the HF cache for a hub id) if there is one."""
    cfg = None
    file = None
    if os.path.isdir(path):
        cand = os.path.join(path, "preprocessor_config.json")
        file = cand if os.path.exists(cand) else None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            res = try_to_load_from_cache(path, "preprocessor_config.json")
            file = res if isinstance(res, str) else None
        except Exception:  # not a valid repo id, no cache: use defaults
            file = None
    if file:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    if not cfg:
        return ImagePreprocess(size=default_size, crop=default_size, mean=tuple(mean), std=tuple(std))
    size = _size_value(cfg.get("size"), default_size)
    crop = _size_value(cfg.get("crop_size"), size) if cfg.get("do_center_crop", True) else size
    resample = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(cfg.get("resample", 3), "bicubic")
    return ImagePreprocess(size=size, crop=crop, mean=tuple(cfg.get("image_mean", mean)),
                           std=tuple(cfg.get("image_std", std)), mode=resample)


# ----------------------------------------------------------------------------------------------------
# loading


def load_pretrained(cls, path_or_id: str, what: str, **kwargs):
    """``cls.from_pretrained(path_or_id)`` with a one-line CheckpointError when it cannot be loaded."""
    try:
        return cls.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot load {what} from '{path_or_id}' ({first}); give a local directory or a hub id that is in "
            f"the local Hugging Face cache (downloads are off when HF_HUB_OFFLINE=1)"
        ) from None


def check_images(name: str, samples: torch.Tensor) -> None:
    if samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"reward '{name}' expects images (N, 3, H, W) in [0, 1]; got shape {tuple(samples.shape)}")


class HFClip:
    """A transformers ``CLIPModel`` with its tokenizer and torch preprocessing, loaded lazily."""

    def __init__(self, model: str, processor: Optional[str] = None, dtype: str = "float32"):
        self.model_id = model
        self.processor_id = processor or model
        self.dtype = getattr(torch, dtype)
        self.model = None
        self.tokenizer = None
        self.preprocess: Optional[ImagePreprocess] = None
        self.device = torch.device("cpu")

    def to(self, device) -> "HFClip":
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def load(self) -> "HFClip":
        if self.model is not None:
            return self
        from transformers import AutoTokenizer, CLIPModel

        model = load_pretrained(CLIPModel, self.model_id, "CLIP model", dtype=self.dtype)
        model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = load_pretrained(AutoTokenizer, self.processor_id, "CLIP tokenizer")
        self.preprocess = preprocess_from_config(self.processor_id, model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.model = model
        return self

    def image_embeds(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        self.load()
        pix = self.preprocess(images.to(self.device, self.dtype))
        out = self.model.vision_model(pixel_values=pix)
        e = self.model.visual_projection(out.pooler_output)
        return F.normalize(e, dim=-1) if normalize else e

    def text_embeds(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        self.load()
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                    attention_mask=tok["attention_mask"].to(self.device))
        e = self.model.text_projection(out.pooler_output)
        return F.normalize(e, dim=-1) if normalize else e


class _HFClipReward(Reward):
    """Shared body of the transformers-CLIP image-text rewards: a lazily loaded :class:`HFClip` and the cosine."""

    differentiable = True
    modality = "image"

    def __init__(self, model: str, processor: Optional[str], dtype: str):
        super().__init__()
        self.clip = HFClip(model, processor, dtype)

    def to(self, device):
        super().to(device)
        self.clip.to(device)
        return self

    def cosine(self, samples, prompts) -> torch.Tensor:
        """cos(image, prompt) per sample (differentiable in ``samples``)."""
        check_images(self.name, samples)
        return (self.clip.image_embeds(samples) * self.clip.text_embeds(prompts)).sum(-1)


@REWARDS.register("clip_score")
class ClipScoreReward(_HFClipReward):
    """``scale · max(cos(image, prompt), clamp_min)`` with a CLIP model (differentiable).

    Args:
        model: hub id or local directory of a transformers ``CLIPModel``.
        processor: where the tokenizer / ``preprocessor_config.json`` live (default: ``model``).
        scale: multiplier (1 = raw cosine; CLIPScore uses 2.5). clamp_min: lower clamp (None = none).
    """

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: Optional[str] = None,
                 scale: float = 1.0, clamp_min: Optional[float] = None, dtype: str = "float32"):
        super().__init__(model, processor, dtype)
        self.scale = float(scale)
        self.clamp_min = clamp_min

    def score(self, samples, prompts, metadata):
        cos = self.cosine(samples, prompts).float()
        if self.clamp_min is not None:
            cos = cos.clamp_min(float(self.clamp_min))
        return self.scale * cos.to(samples.device)


@REWARDS.register("pickscore")
class PickScoreReward(_HFClipReward):
    """PickScore: ``logit_scale.exp() · cos(image, prompt)`` (≈ 100·cos for the released model; differentiable).

    ``divide_by`` rescales the output (e.g. 26 as in Flow-GRPO's ``pickscore`` scorer; default 1 = raw).
    """

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", divide_by: float = 1.0,
                 dtype: str = "float32"):
        super().__init__(model, processor, dtype)
        self.divide_by = float(divide_by)

    def score(self, samples, prompts, metadata):
        cos = self.cosine(samples, prompts)  # loads the model on first use
        s = self.clip.model.logit_scale.exp() * cos
        return (s.float() / self.divide_by).to(samples.device)
