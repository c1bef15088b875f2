"""Saving and loading a generator's trained weights: LoRA in diffusers' layout (``pipe.load_lora_weights`` reads
it; families without a diffusers loader save PEFT adapters), full fine-tunes as the denoiser's own folder, and
training checkpoints of either kind. A mixin of :class:`genalign.models.base.Generator`."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from ..errors import CheckpointError


class WeightsIO:
    def lora_state_dict(self, model=None) -> Dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(model or self.denoiser)

    def save_lora(self, out_dir: str, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` in the layout ``pipe.load_lora_weights(dir)`` reads."""
        sd = state_dict if state_dict is not None else self.lora_state_dict()
        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
        # The adapter metadata (rank, alpha, targets) travels in the safetensors header, so that
        # load_lora_weights reproduces the alpha/rank scaling instead of assuming alpha = rank.
        meta = self.denoiser.peft_config["default"].to_dict()
        type(self.pipe).save_lora_weights(
            out_dir, safe_serialization=True,
            **{f"{self.denoiser_name}_lora_layers": sd, f"{self.denoiser_name}_lora_adapter_metadata": meta})

    lora_files: Tuple[str, ...] = ("pytorch_lora_weights.safetensors",)  # what `genalign export` copies

    @classmethod
    def apply_lora(cls, pipe, path: str) -> None:
        """Load a saved LoRA (folder or file) into a stock pipeline for sampling (diffusers' own loader)."""
        pipe.load_lora_weights(path)

    @classmethod
    def fuse_lora_into(cls, pipe, path: str) -> None:
        """Fuse a saved LoRA into a stock pipeline's weights (``genalign export --fuse``)."""
        pipe.load_lora_weights(path)
        pipe.fuse_lora()
        pipe.unload_lora_weights()

    def load_lora_file(self, path: str, model=None) -> None:
        """Load a diffusers-layout LoRA file (``pytorch_lora_weights.safetensors``) into the live adapter."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        if os.path.isdir(path):
            path = os.path.join(path, "pytorch_lora_weights.safetensors")
        if not os.path.exists(path):
            raise CheckpointError(f"LoRA weights '{path}' do not exist")
        try:
            sd = load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
            raise CheckpointError(f"LoRA weights '{path}' are corrupt or unreadable: {e}") from None
        prefix = f"{self.denoiser_name}."
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
        res = set_peft_model_state_dict(model or self.denoiser, sd)
        missing = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
        if missing:
            raise CheckpointError(f"LoRA weights '{path}' do not match this model ({len(missing)} unexpected keys, "
                                  f"e.g. {missing[0]})")

    def load_full_weights(self, ckpt: str, model=None) -> None:
        """Load a full fine-tune's denoiser (``<ckpt>/<denoiser>/*.safetensors``, diffusers layout) in place."""
        import glob

        from safetensors.torch import load_file

        d = os.path.join(ckpt, self.denoiser_name)
        files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
        if not files:
            raise CheckpointError(f"checkpoint '{ckpt}' has no {self.denoiser_name} weights (*.safetensors in {d})")
        sd = {}
        for f in files:
            try:
                sd.update(load_file(f))
            except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
                raise CheckpointError(f"weights '{f}' are corrupt or unreadable: {e}") from None
        (model or self.denoiser).load_state_dict(sd)

    def load_checkpoint(self, ckpt: str) -> None:
        """Load a training checkpoint's weights, LoRA or full fine-tune (as the checkpoint says), into this model.
        A LoRA checkpoint needs a generator loaded with the same LoRA rank; a full one, a generator without LoRA."""
        if os.path.isfile(ckpt) and not ckpt.endswith(".safetensors"):
            raise CheckpointError(f"'{ckpt}' is a file, not a checkpoint folder (or a LoRA .safetensors file)")
        if not os.path.exists(ckpt):
            raise CheckpointError(f"checkpoint '{ckpt}' does not exist")
        has_lora = os.path.exists(os.path.join(ckpt, "pytorch_lora_weights.safetensors")) or ckpt.endswith(
            ".safetensors")
        if has_lora != self.is_lora:
            kind = "a LoRA" if has_lora else "a full fine-tune"
            raise CheckpointError(f"checkpoint '{ckpt}' holds {kind}, but the model was loaded "
                                  f"{'with' if self.is_lora else 'without'} LoRA (model.lora.rank "
                                  f"{self.cfg.lora.rank}); use the run's own config.yaml")
        if has_lora:
            self.load_lora_file(ckpt)
        else:
            self.load_full_weights(ckpt)

    def save_full(self, out_dir: str) -> None:
        self.denoiser.save_pretrained(os.path.join(out_dir, self.denoiser_name), safe_serialization=True)

    # ---------------------------------------------------------------------------------------------- family hooks
