"""Feature encoders for distributional (set) rewards.

An encoder maps a batch of samples to one feature row per sample. The interface is deliberately small so
that a plain function works::

    encoder(samples) -> (N, D) tensor          # any callable
    encoder.encode_text(texts) -> (N, D)       # optional: cross-modal encoders (CLIP, CLAP)
    encoder.id                                 # optional: a stable string naming the encoder + weights (cache key)
    encoder.to(device)                         # optional

Named encoders live in :data:`ENCODERS` (``clip``, ``dinov2``, ``clap``; other modules register more with
``@ENCODERS.register("name")``, e.g. the toy world's digit-classifier features). :func:`build_encoder` accepts
a name, a dotted import path, an encoder object, or a callable.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError, GenalignError
from ..registry import ENCODERS  # noqa: F401  (registered in one place, genalign/registry.py)
from .clip import IMAGENET_MEAN, IMAGENET_STD, HFClip, check_images, load_pretrained, preprocess_from_config



class Encoder:
    """Base class: subclasses implement :meth:`encode` (and :meth:`encode_text` when cross-modal)."""

    modality = "image"
    id = "encoder"

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def to(self, device) -> "Encoder":
        """Set the device; a lazily loaded ``self.model`` that is already loaded moves with it."""
        self.device = torch.device(device)
        if getattr(self, "model", None) is not None:
            self.model.to(self.device)
        return self

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise GenalignError(f"encoder '{self.id}' is not cross-modal: it cannot embed text exemplars "
                            f"(use clip or clap, or give exemplar samples instead of a text file)")

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self.encode(samples)


class CallableEncoder(Encoder):
    """Wraps a plain ``fn(samples) -> (N, D)`` (and optionally ``text_fn(texts) -> (N, D)``)."""

    def __init__(self, fn: Callable, text_fn: Optional[Callable] = None, id: Optional[str] = None):
        super().__init__()
        self.fn = fn
        self.text_fn = text_fn if text_fn is not None else getattr(fn, "encode_text", None)
        self.id = id or getattr(fn, "id", None) or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        self.modality = getattr(fn, "modality", "any")

    def to(self, device):
        super().to(device)
        if hasattr(self.fn, "to"):
            self.fn.to(device)
        return self

    def encode(self, samples):
        out = self.fn(samples)
        out = torch.as_tensor(out)
        if out.dim() != 2 or out.shape[0] != samples.shape[0]:
            raise ValueError(f"encoder '{self.id}' returned shape {tuple(out.shape)}, expected ({samples.shape[0]}, D)")
        return out

    def encode_text(self, texts):
        if self.text_fn is None:
            return super().encode_text(texts)
        return torch.as_tensor(self.text_fn(list(texts)))


def build_encoder(spec: Union[str, Callable, Encoder], args: Optional[Dict[str, Any]] = None) -> Encoder:
    """An :class:`Encoder` from a registered name, a dotted path, an Encoder, or a callable."""
    args = dict(args or {})
    if isinstance(spec, Encoder):
        return spec
    if isinstance(spec, str):
        obj = ENCODERS.get(spec)
        if isinstance(obj, type):
            from ..config import check_kwargs

            check_kwargs(obj, args, f"encoder '{spec}'")
            obj = obj(**args)
        elif args:
            obj = obj(**args)  # a factory function
        if isinstance(obj, Encoder):
            return obj
        if callable(obj):
            return CallableEncoder(obj, id=spec)
        raise ConfigError(f"encoder '{spec}' is not callable")
    if callable(spec):
        return CallableEncoder(spec)
    raise ConfigError(f"encoder must be a name, a dotted path or a callable, got {type(spec).__name__}")


def encoder_modality(spec: Any) -> str:
    """The modality an encoder spec (as :func:`build_encoder` takes it) embeds, without loading any weights;
    ``"any"`` when it does not say (a plain callable) or cannot be resolved here (building it will report why)."""
    try:
        obj = ENCODERS.get(spec) if isinstance(spec, str) else spec
    except Exception:  # noqa: BLE001 - an unknown/unimportable encoder: the reward's construction names the problem
        return "any"
    return str(getattr(obj, "modality", "any"))


def _pooled(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output


@ENCODERS.register("clip")
class ClipEncoder(Encoder):
    """CLIP image (and text) embeddings from a transformers ``CLIPModel``; ``normalize`` L2-normalises rows."""

    modality = "image"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: Optional[str] = None,
                 normalize: bool = False, dtype: str = "float32"):
        super().__init__()
        self.clip = HFClip(model, processor, dtype)
        self.normalize = bool(normalize)
        self.id = f"clip:{model}:{'norm' if normalize else 'raw'}"

    def to(self, device):
        super().to(device)
        self.clip.to(device)
        return self

    def encode(self, samples):
        check_images(self.id, samples)
        return self.clip.image_embeds(samples, normalize=self.normalize)

    def encode_text(self, texts):
        return self.clip.text_embeds(texts, normalize=self.normalize)


@ENCODERS.register("dinov2")
class Dinov2Encoder(Encoder):
    """DINOv2 features from a transformers ``Dinov2Model``: the [CLS] token (``pool='cls'``, the model's
    pooled output) or the mean patch token (``pool='mean'``). Preprocessing (resize, crop, ImageNet
    normalisation) follows the model's ``preprocessor_config.json``, re-done in torch."""

    modality = "image"

    def __init__(self, model: str = "facebook/dinov2-base", pool: str = "cls", dtype: str = "float32"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ConfigError(f"dinov2: unknown pool '{pool}'; valid choices: cls, mean")
        self.model_id, self.pool = model, pool
        self.dtype = getattr(torch, dtype)
        self.model = None
        self.id = f"dinov2:{model}:{pool}"

    def _load(self):
        if self.model is None:
            from transformers import Dinov2Model

            model = load_pretrained(Dinov2Model, self.model_id, "DINOv2 model", dtype=self.dtype)
            self.preprocess = preprocess_from_config(self.model_id, model.config.image_size, IMAGENET_MEAN, IMAGENET_STD)
            self.model = model.to(self.device).eval().requires_grad_(False)

    def encode(self, samples):
        check_images(self.id, samples)
        self._load()
        out = self.model(pixel_values=self.preprocess(samples.to(self.device, self.dtype)))
        if self.pool == "cls":
            return out.pooler_output
        return out.last_hidden_state[:, 1:].mean(1)


@ENCODERS.register("clap")
class ClapEncoder(Encoder):
    """CLAP audio and text embeddings from a transformers ``ClapModel`` (cross-modal: text exemplars work).

    Waveforms (N, C, L) in [-1, 1] at ``sample_rate`` Hz are mixed to mono, resampled to the feature
    extractor's rate (polyphase, scipy) and turned into log-mel features by the model's ``ClapFeatureExtractor``
    (numpy: not differentiable).
    """

    modality = "audio"

    def __init__(self, model: str = "laion/clap-htsat-unfused", sample_rate: int = 48000, normalize: bool = False,
                 dtype: str = "float32"):
        super().__init__()
        self.model_id = model
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        self.dtype = getattr(torch, dtype)
        self.model = None
        self.id = f"clap:{model}:{'norm' if normalize else 'raw'}"

    def _load(self):
        if self.model is None:
            from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

            model = load_pretrained(ClapModel, self.model_id, "CLAP model", dtype=self.dtype)
            self.feature_extractor = load_pretrained(AutoFeatureExtractor, self.model_id, "CLAP feature extractor")
            self.tokenizer = load_pretrained(AutoTokenizer, self.model_id, "CLAP tokenizer")
            self.model = model.to(self.device).eval().requires_grad_(False)

    def _finish(self, e):
        return F.normalize(e, dim=-1) if self.normalize else e

    def encode(self, samples):
        if samples.dim() != 3:
            raise ValueError(f"encoder '{self.id}' expects waveforms (N, C, L); got shape {tuple(samples.shape)}")
        self._load()
        wav = samples.detach().float().mean(1).cpu().numpy()
        sr = int(self.feature_extractor.sampling_rate)
        if sr != self.sample_rate:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(sr, self.sample_rate)
            wav = resample_poly(wav, sr // g, self.sample_rate // g, axis=-1)
        feats = self.feature_extractor(list(wav), sampling_rate=sr, return_tensors="pt")
        kw = {"input_features": feats["input_features"].to(self.device, self.dtype)}
        if "is_longer" in feats:
            kw["is_longer"] = feats["is_longer"].to(self.device)
        return self._finish(_pooled(self.model.get_audio_features(**kw)))

    def encode_text(self, texts):
        self._load()
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self._finish(_pooled(self.model.get_text_features(**tok)))


# ----------------------------------------------------------------------------------------------------
# media bytes <-> tensors (shared by exemplar folders and the remote-reward protocol; no pickle anywhere)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_EXTS = (".wav",)


def encode_png(image: torch.Tensor) -> bytes:
    """(3, H, W) floats in [0, 1] -> 8-bit RGB PNG bytes (values are rounded to 1/255)."""
    import io

    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, what: str = "image") -> torch.Tensor:
    """Image bytes (PNG/JPEG/...) -> (3, H, W) float32 in [0, 1]; GenalignError when they are not an image."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Image.DecompressionBombError as e:
        raise GenalignError(f"{what} is too large to decode: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise GenalignError(f"{what} is not a readable image ({type(e).__name__})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def encode_wav(wave_: torch.Tensor, sample_rate: int) -> bytes:
    """(C, L) floats in [-1, 1] -> 16-bit PCM WAV bytes (values are rounded to 1/32767)."""
    import io
    import wave

    x = (wave_.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16).T.contiguous().cpu().numpy()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(int(wave_.shape[0]))
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(x.tobytes())
    return buf.getvalue()


def decode_wav(data: bytes, what: str = "audio"):
    """16-bit (or 8/32-bit) PCM WAV bytes -> ((C, L) float32 in [-1, 1], sample_rate)."""
    import io
    import wave

    import numpy as np

    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            c, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, ValueError) as e:
        raise GenalignError(f"{what} is not a readable PCM WAV file ({e})") from None
    if width == 2:
        arr = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32767.0
    elif width == 4:
        arr = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483647.0
    elif width == 1:
        arr = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 127.0
    else:
        raise GenalignError(f"{what}: unsupported WAV sample width {width} bytes; valid: 1, 2, 4")
    if arr.size % c:
        raise GenalignError(f"{what}: truncated WAV data")
    return torch.from_numpy(arr.reshape(-1, c).T.copy()), sr
