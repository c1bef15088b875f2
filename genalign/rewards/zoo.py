"""Reward-model zoo: HPSv2, ImageReward, the LAION aesthetic predictor, and an OCR reward.

All weights load lazily on the first call, by hub id or local path, on the device given by ``to(device)``.
Weight files are read with safetensors or ``torch.load(weights_only=True)`` — never unpickled.

* ``hpsv2`` — Human Preference Score v2 (Wu et al., arXiv 2306.09341): cosine similarity of open_clip
  ViT-H-14 image and text embeddings after loading an HPS checkpoint (``HPS_v2_compressed.pt`` /
  ``HPS_v2.1_compressed.pt``). Needs the ``open_clip_torch`` extra. Differentiable.
* ``image_reward`` — ImageReward (Xu et al., arXiv 2304.05977): a BLIP image-grounded text encoder
  (the [CLS] state of the text encoder cross-attending to the ViT image tokens) followed by an MLP head
  768→1024→128→64→16→1, normalised with the released mean/std. Loaded from a *transformers* BLIP directory
  (``BlipForImageTextRetrieval`` + tokenizer) plus a head file (``mlp.safetensors``); the original
  ``ImageReward.pt`` uses the BLIP reference code's parameter names and must be converted first (see
  :func:`ImageRewardReward`'s docstring). Differentiable.
* ``aesthetic`` — LAION aesthetic predictor v2 ("improved-aesthetic-predictor", sac+logos+ava1-l14-linearMSE):
  CLIP ViT-L/14 image embedding, L2-normalised, then a linear MLP 768→1024→128→64→16→1 (dropout only, no
  activations), keys ``layers.{0,2,4,6,7}``. Differentiable.
* ``ocr`` — text rendering accuracy (as in Flow-GRPO's OCR reward): ``1 − min(d, |t|)/|t|`` where t is the
  quoted text of the prompt and d the edit distance to the recognised text; NaN when the prompt quotes
  nothing. The OCR engine is pluggable (``engine``): ``paddleocr`` / ``easyocr`` (optional extras) or a
  dotted path to a callable ``engine(uint8 HxWx3 numpy image) -> str``. Not differentiable.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, GenalignError
from ..registry import REWARDS
from .base import Reward
from .clip import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFClip, ImagePreprocess, check_images, load_pretrained,
                   preprocess_from_config)


# ----------------------------------------------------------------------------------------------------
# weight files


def load_state_dict(path: str, what: str) -> Dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only=True``.

    A top-level ``state_dict`` / ``model`` entry is unwrapped and DDP's ``module.`` prefix stripped.
    """
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{what}: weights file '{path}' not found")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle that needs arbitrary code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what}: cannot read weights file '{path}' ({msg})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{what}: '{path}' does not hold a state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def mlp_head_from_state_dict(sd: Dict[str, torch.Tensor], prefix: str = "layers.", what: str = "MLP head") -> nn.Sequential:
    """Rebuild the LAION/ImageReward head (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear).

    Layer widths are read from the weights, so tiny heads (tests) and the released 768-wide ones load alike.
    Dropout is inactive in eval mode, so the head is affine; the dropout slots keep the released key names.
    """
    idx = [0, 2, 4, 6, 7]
    try:
        shapes = [tuple(sd[f"{prefix}{i}.weight"].shape) for i in idx]
    except KeyError as e:
        raise CheckpointError(f"{what}: missing key {e} (expected {prefix}{{0,2,4,6,7}}.weight/bias)") from None
    mods: List[nn.Module] = []
    for j, i in enumerate(idx):
        while len(mods) < i:
            mods.append(nn.Dropout(0.0))
        out_f, in_f = shapes[j]
        mods.append(nn.Linear(in_f, out_f))
    head = nn.Sequential(*mods)
    own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        head.load_state_dict(own, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: weights do not fit ({str(e).splitlines()[0]})") from None
    return head


# ----------------------------------------------------------------------------------------------------
# aesthetic


@REWARDS.register("aesthetic")
class AestheticReward(Reward):
    """LAION aesthetic predictor v2: ``head(normalize(CLIP_img(x)))``; scores are roughly on a 1–10 scale.

    Args:
        head: path to the head weights (``.safetensors``, or ``.pth`` read with weights_only), e.g. the released
            ``sac+logos+ava1-l14-linearMSE.pth``.
        model: CLIP ViT-L/14 hub id or local directory (transformers ``CLIPModel``).
    """

    differentiable = True
    modality = "image"

    def __init__(self, head: str = "sac+logos+ava1-l14-linearMSE.pth", model: str = "openai/clip-vit-large-patch14",
                 dtype: str = "float32"):
        super().__init__()
        self.clip = HFClip(model, None, dtype)
        self.head_path = head
        self.head: Optional[nn.Module] = None

    def to(self, device):
        super().to(device)
        self.clip.to(device)
        if self.head is not None:
            self.head.to(self.device)
        return self

    def _load(self):
        if self.head is None:
            sd = load_state_dict(self.head_path, "aesthetic head")
            self.head = mlp_head_from_state_dict(sd, "layers.", "aesthetic head").eval().requires_grad_(False)
            self.head.to(self.device)
        self.clip.load()

    def score(self, samples, prompts, metadata):
        check_images(self.name, samples)
        self._load()
        emb = self.clip.image_embeds(samples, normalize=True)
        return self.head(emb.to(next(self.head.parameters()).dtype)).squeeze(-1).float().to(samples.device)


# ----------------------------------------------------------------------------------------------------
# HPSv2


@REWARDS.register("hpsv2")
class HPSv2Reward(Reward):
    """HPSv2: ``cos(E_img(x), E_txt(prompt))`` of an open_clip model with an HPS checkpoint.

    Args:
        checkpoint: HPS weights (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt`` read with weights_only,
            or a ``.safetensors`` export of the same state dict).
        arch: open_clip architecture name (``ViT-H-14``), or a path to a JSON file
            ``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}`` for a custom architecture.
    """

    differentiable = True
    modality = "image"

    def __init__(self, checkpoint: str = "HPS_v2.1_compressed.pt", arch: str = "ViT-H-14", dtype: str = "float32"):
        super().__init__()
        self.checkpoint = checkpoint
        self.arch = arch
        self.dtype = getattr(torch, dtype)
        self.model = None

    def to(self, device):
        super().to(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def _load(self):
        if self.model is not None:
            return
        try:
            import open_clip
        except ImportError:
            raise GenalignError("reward 'hpsv2' needs open_clip: pip install 'genalign[rewards]' (open_clip_torch)") from None
        import json

        if self.arch.endswith(".json"):
            if not os.path.isfile(self.arch):
                raise ConfigError(f"hpsv2: architecture file '{self.arch}' not found")
            with open(self.arch, encoding="utf-8") as f:
                cfg = json.load(f)
        else:
            cfg = open_clip.get_model_config(self.arch)
            if cfg is None:
                raise ConfigError(f"hpsv2: unknown open_clip architecture '{self.arch}'; valid choices include "
                                  f"ViT-H-14, ViT-L-14, ViT-B-32 (or a path to a .json model config)")
        cfg = dict(cfg)
        model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                               quick_gelu=cfg.get("quick_gelu", False))
        sd = load_state_dict(self.checkpoint, "hpsv2 checkpoint")
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"hpsv2: checkpoint '{self.checkpoint}' does not fit architecture '{self.arch}' "
                                  f"({str(e).splitlines()[0]})") from None
        ctx = int(cfg["text_cfg"].get("context_length", 77))
        self.tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        size = cfg["vision_cfg"].get("image_size", 224)
        size = size if isinstance(size, int) else size[0]
        self.preprocess = ImagePreprocess(size=size, crop=size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)

    def score(self, samples, prompts, metadata):
        check_images(self.name, samples)
        self._load()
        pix = self.preprocess(samples.to(self.device, self.dtype))
        img = F.normalize(self.model.encode_image(pix), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)), dim=-1)
        return (img * txt).sum(-1).float().to(samples.device)


# ----------------------------------------------------------------------------------------------------
# ImageReward

IMAGE_REWARD_MEAN = 0.16717362830052426  # released normalisation of ImageReward's raw head output
IMAGE_REWARD_STD = 1.0333394966054072


@REWARDS.register("image_reward")
class ImageRewardReward(Reward):
    """ImageReward on transformers' BLIP classes: ``(head(text_encoder(prompt | image)[CLS]) − mean) / std``.

    Args:
        model: directory (or hub id) of a ``BlipForImageTextRetrieval`` with its BERT tokenizer — the BLIP
            backbone of ImageReward converted to transformers' parameter names.
        head: the MLP head weights (keys ``layers.{0,2,4,6,7}`` or ``mlp.layers.…``); default
            ``<model>/mlp.safetensors``.
        max_length: prompt token length (35 in ImageReward). mean/std: output normalisation (released values).

    The released ``ImageReward.pt`` (BLIP reference-code names, ``blip.*`` and ``mlp.*``) is converted once
    into such a directory with :func:`convert_image_reward_checkpoint`.
    """

    differentiable = True
    modality = "image"

    def __init__(self, model: Optional[str] = None, head: Optional[str] = None, max_length: int = 35,
                 mean: float = IMAGE_REWARD_MEAN, std: float = IMAGE_REWARD_STD, dtype: str = "float32"):
        super().__init__()
        self.model_id = model
        self.head_path = head
        self.max_length = int(max_length)
        self.mean, self.std = float(mean), float(std)
        self.dtype = getattr(torch, dtype)
        self.model = None

    def to(self, device):
        super().to(device)
        if self.model is not None:
            self.model.to(self.device)
            self.head.to(self.device)
        return self

    def _load(self):
        if self.model is not None:
            return
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        if not self.model_id:
            raise ConfigError("reward 'image_reward' needs model: a directory holding a transformers "
                              "BlipForImageTextRetrieval, its tokenizer and mlp.safetensors")

        model = load_pretrained(BlipForImageTextRetrieval, self.model_id, "ImageReward BLIP backbone", dtype=self.dtype)
        self.tokenizer = load_pretrained(AutoTokenizer, self.model_id, "ImageReward tokenizer")
        head_path = self.head_path or os.path.join(self.model_id, "mlp.safetensors")
        sd = load_state_dict(head_path, "image_reward head")
        prefix = "mlp.layers." if any(k.startswith("mlp.layers.") for k in sd) else "layers."
        self.head = mlp_head_from_state_dict(sd, prefix, "image_reward head").to(self.device, self.dtype).eval()
        self.head.requires_grad_(False)
        self.preprocess = preprocess_from_config(self.model_id, model.config.vision_config.image_size)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def score(self, samples, prompts, metadata):
        check_images(self.name, samples)
        self._load()
        pix = self.preprocess(samples.to(self.device, self.dtype))
        image_embeds = self.model.vision_model(pixel_values=pix).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        out = self.model.text_encoder(input_ids=tok["input_ids"].to(self.device),
                                      attention_mask=tok["attention_mask"].to(self.device),
                                      encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        raw = self.head(out.last_hidden_state[:, 0, :]).squeeze(-1)
        return ((raw - self.mean) / self.std).float().to(samples.device)


# BLIP reference-code (salesforce/BLIP models/vit.py) vision names -> transformers' BlipVisionModel names.
# The text encoder (models/med.py BertModel) uses the same names in both. Applied in order.
_BLIP_VISION_RENAMES = [
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.norm\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision_model.encoder.layers.\1.self_attn.qkv."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
]


def blip_key_to_transformers(key: str) -> str:
    for pat, rep in _BLIP_VISION_RENAMES:
        new = re.sub(pat, rep, key)
        if new != key:
            return new
    return key


def image_reward_default_config():
    """ImageReward's backbone: BLIP ViT-L/16 at 224 px + BERT-base text encoder cross-attending to it."""
    from transformers import BlipConfig

    return BlipConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=16, layer_norm_eps=1e-6),
        text_config=dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512),
        projection_dim=256, image_text_hidden_size=256,
    )


def convert_image_reward_checkpoint(checkpoint: str, out_dir: str, tokenizer: str, config=None) -> str:
    """Convert the released ``ImageReward.pt`` into a directory that ``image_reward`` loads.

    ``tokenizer`` is a local BERT (bert-base-uncased) tokenizer directory; ImageReward adds ``[DEC]`` (bos) and
    ``[ENC]`` tokens, added here too when missing. ``config`` is a ``BlipConfig`` (default: ImageReward's).
    The retrieval model's ``vision_proj``/``text_proj``/``itm_head`` are unused by the score and may be absent
    from the checkpoint. Key mapping follows transformers' BLIP conversion; not verified against the released
    file here (no download possible), verified on a tiny round trip in the tests.
    """
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

    sd = load_state_dict(checkpoint, "ImageReward checkpoint")
    backbone = {blip_key_to_transformers(k[len("blip."):]): v for k, v in sd.items() if k.startswith("blip.")}
    head = {k: v for k, v in sd.items() if k.startswith("mlp.layers.")}
    if not backbone or not head:
        raise CheckpointError(f"'{checkpoint}' is not an ImageReward checkpoint (expected 'blip.*' and 'mlp.layers.*' keys)")
    model = BlipForImageTextRetrieval(config if config is not None else image_reward_default_config())
    res = model.load_state_dict(backbone, strict=False)
    optional = ("vision_proj.", "text_proj.", "itm_head.", "text_encoder.embeddings.position_ids")
    missing = [k for k in res.missing_keys if not k.startswith(optional)]
    unexpected = [k for k in res.unexpected_keys if not k.startswith(optional)
                  and not k.startswith(("text_encoder_m", "visual_encoder_m", "vision_proj_m", "text_proj_m"))]
    if missing or unexpected:
        raise CheckpointError(f"ImageReward checkpoint '{checkpoint}' does not fit the BLIP config: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    tok = load_pretrained(AutoTokenizer, tokenizer, "BERT tokenizer")
    if tok.bos_token is None:
        tok.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    size = model.config.vision_config.image_size
    BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(OPENAI_CLIP_MEAN),
                       image_std=list(OPENAI_CLIP_STD), resample=3).save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in head.items()}, os.path.join(out_dir, "mlp.safetensors"))
    return out_dir


# ----------------------------------------------------------------------------------------------------
# OCR

_QUOTES = re.compile(r'"([^"]*)"|“([^”]*)”')


def quoted_text(prompt: str) -> Optional[str]:
    """The text inside double quotes ("…" or “…”) in a prompt, segments joined by a space; None if none."""
    parts = [a if a is not None and a != "" else b for a, b in _QUOTES.findall(prompt)]
    parts = [p for p in parts if p]
    return " ".join(parts) if parts else None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _paddleocr_engine():
    try:
        from paddleocr import PaddleOCR
    except ImportError:
        raise GenalignError("ocr engine 'paddleocr' needs: pip install paddleocr paddlepaddle") from None
    ocr = PaddleOCR(use_angle_cls=False, lang="en")

    def run(img) -> str:
        res = ocr.ocr(img)
        texts = []
        for page in res or []:
            for line in page or []:
                try:
                    texts.append(str(line[1][0]))
                except (IndexError, TypeError):
                    pass
        return " ".join(texts)

    return run


def _easyocr_engine():
    try:
        import easyocr
    except ImportError:
        raise GenalignError("ocr engine 'easyocr' needs: pip install easyocr") from None
    reader = easyocr.Reader(["en"], gpu=torch.cuda.is_available())
    return lambda img: " ".join(reader.readtext(img, detail=0))


OCR_ENGINES = {"paddleocr": _paddleocr_engine, "easyocr": _easyocr_engine}


@REWARDS.register("ocr")
class OcrReward(Reward):
    """``1 − min(edit_distance(recognised, quoted), |quoted|) / |quoted|`` in [0, 1]; NaN without quoted text.

    Args:
        engine: ``paddleocr`` | ``easyocr`` | a dotted path ``pkg.mod:fn`` to a callable
            ``fn(image: uint8 numpy (H, W, 3)) -> str`` (or to a zero-argument factory returning one when
            ``engine_factory`` is true) | a callable (when constructed from Python).
        ignore_case / ignore_spaces: compare lower-cased / with all whitespace removed (Flow-GRPO does both).
    """

    differentiable = False
    modality = "image"

    def __init__(self, engine: Union[str, Callable] = "paddleocr", engine_factory: bool = False,
                 ignore_case: bool = True, ignore_spaces: bool = True):
        super().__init__()
        self.engine_spec = engine
        self.engine_factory = bool(engine_factory)
        self.ignore_case = bool(ignore_case)
        self.ignore_spaces = bool(ignore_spaces)
        self._engine: Optional[Callable] = None

    def _get_engine(self) -> Callable:
        if self._engine is None:
            spec = self.engine_spec
            if callable(spec):
                self._engine = spec
            elif spec in OCR_ENGINES:
                self._engine = OCR_ENGINES[spec]()
            elif isinstance(spec, str) and ("." in spec or ":" in spec):
                from ..registry import _import_path

                fn = _import_path(spec, "ocr engine")
                self._engine = fn() if self.engine_factory else fn
            else:
                raise ConfigError(f"unknown ocr engine '{spec}'; valid choices: easyocr, paddleocr "
                                  f"(or a dotted path such as 'my_pkg.ocr:recognise')")
        return self._engine

    def _norm(self, s: str) -> str:
        if self.ignore_case:
            s = s.lower()
        if self.ignore_spaces:
            s = "".join(s.split())
        return s

    def score(self, samples, prompts, metadata):
        check_images(self.name, samples)
        targets = [quoted_text(p) for p in prompts]
        out = torch.full((samples.shape[0],), float("nan"))
        if all(t is None or not self._norm(t) for t in targets):
            return out
        engine = self._get_engine()
        arr = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for i, t in enumerate(targets):
            if t is None:
                continue
            target = self._norm(t)
            if not target:
                continue
            rec = self._norm(str(engine(arr[i]) or ""))
            d = min(edit_distance(rec, target), len(target))
            out[i] = 1.0 - d / len(target)
        return out
