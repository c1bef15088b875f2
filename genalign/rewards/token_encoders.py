"""Frozen token encoders and reference sets for the adversarial reward (Adv-GRPO, METHODS.md §7).

A token encoder maps images (N, 3, H, W) in [0, 1] to a class token and patch tokens of one width D::

    cls, patches = encoder.tokens(images)      # (N, D), (N, P, D); gradient-free, float32, on encoder.device

* ``dinov2`` — a transformers ``Dinov2Model``: the final layer-normed hidden states (as timm's
  ``forward_features``), token 0 = class token, the rest = patch tokens. Images are resized straight to
  ``image_size`` (default: the model config's, 518 for the released DINOv2) with bicubic interpolation and
  ImageNet-normalised, as the reference's ``dino_patch_cotrain_score`` does (no centre crop).
* ``clip`` — the vision tower of a transformers CLIP model: ``post_layernorm`` of every final hidden state
  (token 0 = class token, which is then CLIP's pooled output), the model's preprocessing.
* ``digits`` — the toy world's digit classifier: class token = its penultimate features (the features of the
  toy FD, 64-d); patch tokens = the 16 spatial cells of its last feature map carried into the same space by the
  first linear layer, ``p_j = 16·W_j·x_j + b`` (W_j the columns of ``fc1`` that read cell j), so that the mean of
  the patch tokens is ``fc1``'s pre-activation and the class token is ``relu`` of that mean.

A dotted import path names a user's class with the same ``tokens`` method.

References (:class:`References`) are positives for the discriminator: an image folder, an embeddings file
(``.safetensors`` with ``cls`` (M, D) and optionally ``patches`` (M, P, D), written by
:func:`save_reference_tokens`; a DRAGON exemplar file's ``embeddings`` counts as ``cls``), or per-prompt sets
from a ``.jsonl`` file of ``{"prompt": ..., "references": [image paths]}`` (paths relative to the file), as
Adv-GRPO's references generated per prompt by a stronger model. A sample's metadata may carry its own
``references`` list, which wins over the file.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError, GenalignError
from .clip import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_images, load_pretrained
from .encoders import IMAGE_EXTS, decode_image

TOKEN_ENCODERS = ("dinov2", "clip", "digits")
REFERENCE_KINDS = ("auto", "images", "embeddings", "per_prompt")


class TokenEncoder:
    id = "tokens"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.model = None

    def to(self, device) -> "TokenEncoder":
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1 + P, D) hidden states, class token first."""
        raise NotImplementedError

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        check_images(self.id, images)
        h = self._tokens(images.detach().to(self.device)).float()
        return h[:, 0], h[:, 1:]


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class Dinov2Tokens(TokenEncoder):
    def __init__(self, model: str = "facebook/dinov2-base", image_size: Optional[int] = None, dtype: str = "float32"):
        super().__init__()
        self.model_id, self.image_size, self.dtype = model, image_size, getattr(torch, dtype)
        self.id = f"dinov2-tokens:{model}:{image_size}"

    def _load(self):
        if self.model is None:
            from transformers import Dinov2Model

            m = load_pretrained(Dinov2Model, self.model_id, "DINOv2 model", dtype=self.dtype)
            self.size = int(self.image_size or m.config.image_size)
            self.model = m.to(self.device).eval().requires_grad_(False)

    def _tokens(self, images):
        self._load()
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = _normalise(x, IMAGENET_MEAN, IMAGENET_STD).to(self.dtype)
        return self.model(pixel_values=x).last_hidden_state


class ClipTokens(TokenEncoder):
    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: Optional[str] = None,
                 dtype: str = "float32"):
        super().__init__()
        self.model_id, self.processor_id, self.dtype = model, processor or model, getattr(torch, dtype)
        self.id = f"clip-tokens:{model}"

    def _load(self):
        if self.model is None:
            from transformers import CLIPVisionModel

            from .clip import preprocess_from_config

            m = load_pretrained(CLIPVisionModel, self.model_id, "CLIP vision model", dtype=self.dtype)
            self.preprocess = preprocess_from_config(self.processor_id, m.config.image_size, OPENAI_CLIP_MEAN,
                                                     OPENAI_CLIP_STD)
            self.model = m.to(self.device).eval().requires_grad_(False)

    def _tokens(self, images):
        self._load()
        vm = getattr(self.model, "vision_model", self.model)  # transformers < 5 wraps the tower, 5 does not
        out = vm(pixel_values=self.preprocess(images.float()).to(self.dtype))
        return vm.post_layernorm(out.last_hidden_state)


class DigitTokens(TokenEncoder):
    id = "digits-tokens:toy-digit-classifier"

    def _tokens(self, images):
        from ..toy.assets import load_classifier

        clf = load_classifier(device=self.device)
        x = clf._prep(images)
        x = F.max_pool2d(F.relu(clf.conv1(x)), 2)
        x = F.max_pool2d(F.relu(clf.conv2(x)), 2)  # (N, C, h, w)
        n, c, h, w = x.shape
        wt = clf.fc1.weight.view(-1, c, h * w)  # fc1 reads the flattened map channel-major
        patches = torch.einsum("dcj,ncj->njd", wt, x.flatten(2)) * (h * w) + clf.fc1.bias
        cls = F.relu(patches.mean(1))  # = clf.features(images)
        return torch.cat([cls[:, None], patches], 1)


def build_token_encoder(spec, args: Optional[dict] = None) -> TokenEncoder:
    args = dict(args or {})
    if not isinstance(spec, str):
        if hasattr(spec, "tokens"):
            return spec
        raise ConfigError(f"reward 'adversarial': encoder must be a name or an object with tokens(); "
                          f"valid names: {', '.join(TOKEN_ENCODERS)}")
    table = {"dinov2": Dinov2Tokens, "clip": ClipTokens, "digits": DigitTokens}
    if spec in table:
        cls = table[spec]
    elif "." in spec or ":" in spec:
        from ..registry import _import_path

        cls = _import_path(spec, "token encoder")
    else:
        raise ConfigError(f"reward 'adversarial': unknown encoder '{spec}'; valid choices: "
                          f"{', '.join(TOKEN_ENCODERS)} (or a dotted import path)")
    from ..config import check_kwargs

    check_kwargs(cls, args, "reward 'adversarial'.encoder_args")
    return cls(**args)


def save_reference_tokens(encoder: TokenEncoder, images: torch.Tensor, path: str, batch_size: int = 32) -> None:
    """Encode reference images once and write ``{cls, patches}`` as a ``.safetensors`` embeddings file."""
    from safetensors.torch import save

    from ..io import atomic_write_bytes

    cs, ps = zip(*(encoder.tokens(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)))
    tensors = {"cls": torch.cat(cs).cpu().contiguous(), "patches": torch.cat(ps).cpu().contiguous()}
    atomic_write_bytes(path, save(tensors, metadata={"encoder": str(getattr(encoder, "id", ""))}))


def _load_images(files: Sequence[str]) -> torch.Tensor:
    imgs = []
    for f in files:
        if not os.path.isfile(f):
            raise GenalignError(f"reference image '{f}' not found")
        with open(f, "rb") as fh:
            imgs.append(decode_image(fh.read(), f"reference image '{f}'"))
    h, w = imgs[0].shape[-2:]
    imgs = [im if im.shape[-2:] == (h, w) else
            F.interpolate(im[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
            for im in imgs]
    return torch.stack(imgs)


class References:
    """Reference (positive) examples: :meth:`pick` draws keys for one sample with its generator,
    :meth:`tokens_of` / :meth:`images_of` turn keys into tokens / images."""

    def __init__(self, source, kind: str = "auto", encoder: Optional[TokenEncoder] = None):
        if kind not in REFERENCE_KINDS:
            raise ConfigError(f"reward 'adversarial': unknown reference_kind '{kind}'; valid choices: "
                              f"{', '.join(REFERENCE_KINDS)}")
        if source is None:
            raise ConfigError("reward 'adversarial' needs reference: an image folder, a .safetensors embeddings "
                              "file or a .jsonl file of {prompt, references}")
        self.source, self.encoder = source, encoder
        self.kind = self._resolve(str(source), kind)
        self.files: List[str] = []
        self.by_prompt: Dict[str, List[str]] = {}
        self.cls: Optional[torch.Tensor] = None
        self.patches: Optional[torch.Tensor] = None
        if self.kind == "images":
            if not os.path.isdir(source):
                raise GenalignError(f"reference folder '{source}' does not exist (reference: an image folder, a "
                                    f".safetensors token file or a .jsonl of {{prompt, references}})")
            self.files = sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTS))
            if not self.files:
                raise GenalignError(f"reference folder '{source}' has no images ({', '.join(IMAGE_EXTS)})")
        elif self.kind == "embeddings":
            self._load_embeddings(str(source))
        else:
            self._load_jsonl(str(source))

    @staticmethod
    def _resolve(src: str, kind: str) -> str:
        if kind != "auto":
            return kind
        if src.endswith(".safetensors"):
            return "embeddings"
        if src.endswith(".jsonl"):
            return "per_prompt"
        return "images"

    def _load_embeddings(self, path: str) -> None:
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise GenalignError(f"reference embeddings file '{path}' not found")
        t = load_file(path)
        cls = t.get("cls", t.get("embeddings"))
        if cls is None or cls.dim() != 2 or cls.shape[0] < 1:
            raise GenalignError(f"reference embeddings file '{path}' needs a 'cls' (M, D) tensor; it has "
                                f"{', '.join(sorted(t)) or 'nothing'}")
        p = t.get("patches")
        if p is not None and (p.dim() != 3 or p.shape[0] != cls.shape[0] or p.shape[2] != cls.shape[1]):
            raise GenalignError(f"reference embeddings file '{path}': 'patches' must be (M, P, D) = "
                                f"({cls.shape[0]}, P, {cls.shape[1]}), got {tuple(p.shape)}")
        self.cls, self.patches = cls.float(), None if p is None else p.float()

    def _load_jsonl(self, path: str) -> None:
        if not os.path.isfile(path):
            raise GenalignError(f"reference prompts file '{path}' not found")
        root = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise GenalignError(f"reference prompts file '{path}' line {i + 1} is not valid JSON") from None
                refs = rec.get("references") if isinstance(rec, dict) else None
                if "prompt" not in (rec if isinstance(rec, dict) else {}) or not isinstance(refs, list) or not refs:
                    raise GenalignError(f"reference prompts file '{path}' line {i + 1} needs 'prompt' and a "
                                        f"non-empty 'references' list of image paths")
                self.by_prompt.setdefault(str(rec["prompt"]), []).extend(
                    r if os.path.isabs(r) else os.path.join(root, r) for r in refs)
        if not self.by_prompt:
            raise GenalignError(f"reference prompts file '{path}' holds no prompts")

    @property
    def has_patches(self) -> bool:
        return self.kind != "embeddings" or self.patches is not None

    @property
    def size(self) -> int:
        if self.kind == "embeddings":
            return int(self.cls.shape[0])
        return len(self.files) if self.kind == "images" else sum(len(v) for v in self.by_prompt.values())

    def pick(self, generator: torch.Generator, n: int, prompt: Optional[str] = None,
             meta: Optional[dict] = None) -> list:
        """Keys of ``n`` references for one sample (a random permutation of its pool, repeated when ``n`` exceeds
        it): its metadata's ``references`` (image paths) when given, else its prompt's set (per-prompt
        references), else the whole folder or token file (row indices)."""
        refs = (meta or {}).get("references")
        if refs is not None:
            if self.kind == "embeddings":
                raise GenalignError("metadata 'references' are image paths; they need an image reference source "
                                    "(a folder or a .jsonl), not a token file")
            pool = [str(r) for r in refs]
        elif self.kind == "per_prompt":
            if prompt not in self.by_prompt:
                raise GenalignError(f"no references for prompt '{str(prompt)[:60]}' (neither in the reference file "
                                    f"nor in its metadata['references'])")
            pool = self.by_prompt[prompt]
        elif self.kind == "images":
            pool = self.files
        else:
            return _pick(generator, self.size, n).tolist()
        if not pool:
            raise GenalignError(f"empty metadata 'references' for prompt '{str(prompt)[:60]}'")
        return [pool[i] for i in _pick(generator, len(pool), n).tolist()]

    def tokens_of(self, keys: Sequence) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Tokens (cls (n, D), patches (n, P, D) or None) of picked references."""
        if self.kind == "embeddings":
            idx = torch.as_tensor(list(keys), dtype=torch.long)
            return self.cls[idx], None if self.patches is None else self.patches[idx]
        return self.encoder.tokens(_load_images(keys))

    def images_of(self, keys: Sequence) -> torch.Tensor:
        if self.kind == "embeddings":
            raise GenalignError(f"reference '{self.source}' holds pre-computed tokens; this reward needs images "
                                f"(an image folder or a .jsonl of prompt references)")
        return _load_images(keys)

    def pick_all(self, generators, n: int, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> list:
        """``n`` reference keys for every sample, sample i drawing with ``generators[i]`` (or one shared generator)."""
        out = []
        for i, p in enumerate(prompts):
            g = generators[i] if isinstance(generators, (list, tuple)) else generators
            out += self.pick(g, n, p, metadata[i] if metadata else None)
        return out


def _pick(generator: torch.Generator, size: int, n: int) -> torch.Tensor:
    """``n`` indices into ``range(size)``: a random permutation, repeated when ``n > size``."""
    reps = -(-n // size)
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(reps)])[:n]
