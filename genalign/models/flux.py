"""FLUX.1 adapter (``FluxPipeline``): rectified flow, MM-DiT transformer on packed 2×2 latent patches.

- States are stored **packed**, shape (H/2·W/2, 4C) per sample — the layout the transformer consumes and the
  stock pipeline's ``latents=`` argument expects — so no pack/unpack per forward; ``decode`` unpacks with the
  pipeline's own ``_unpack_latents``. (Kernels are elementwise, so the layout does not change any log-prob.)
- Conditioning: the pipeline's ``encode_prompt`` (CLIP-L pooled + T5 sequence); txt/img position ids are
  rebuilt from shapes with the pipeline's ``_prepare_latent_image_ids`` (they carry no batch dimension).
- Guidance: FLUX.1-dev is guidance-distilled, so ``guidance_scale`` is fed to the transformer's ``guidance``
  input (when ``transformer.config.guidance_embeds``; FLUX.1-schnell has none and ignores it). True CFG
  (a second, negative-prompt pass) is **not** offered: ``uses_cfg`` is always False — the DanceGRPO / MixGRPO
  FLUX.1-dev recipe (embedded guidance 3.5, true CFG off, METHODS.md §3).
- Schedule: exactly the stock pipeline's — ``sigmas = linspace(1, 1/T, T)`` through the scheduler with
  resolution-dependent dynamic shifting (``mu`` from the packed sequence length). A ``sampler.shift`` override
  switches to a static shift σ ← sσ/(1+(s−1)σ) of the same sigmas (DanceGRPO's FLUX schedule, s = 3), which the
  stock pipeline cannot reproduce.
- LoRA default: the attention projections of the double-stream blocks (``to_q/k/v``, ``to_out.0``, and the
  text-stream ``add_{q,k,v}_proj`` / ``to_add_out``) and ``to_q/k/v`` of the single-stream blocks.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import MODELS
from .base import Generator, Schedule
from .laws import RectifiedFlow
from .sd3 import JOINT_ATTENTION_LORA_TARGETS


def flux_schedule(scheduler, num_steps: int, shift: Optional[float], image_seq_len: int) -> Schedule:
    """Sigmas as ``FluxPipeline.__call__`` computes them (its linspace sigmas + ``mu`` from calculate_shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    if shift is not None:
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg, shift=shift, use_dynamic_shifting=False)
    else:
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    sigmas = None if sched.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
    mu = calculate_shift(image_seq_len, sched.config.get("base_image_seq_len", 256),
                         sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                         sched.config.get("max_shift", 1.15))
    if sigmas is None:
        sched.set_timesteps(num_steps, device="cpu", mu=mu)
    else:
        sched.set_timesteps(device="cpu", sigmas=sigmas, mu=mu)
    return Schedule(timesteps=sched.timesteps.float().clone(), sigmas=sched.sigmas.float().clone())


@MODELS.register("flux")
class FluxGenerator(Generator):
    family = "flux"
    kind = "flow"
    law_class = RectifiedFlow
    denoiser_name = "transformer"
    default_lora_targets = JOINT_ATTENTION_LORA_TARGETS
    max_sequence_length: int = 512  # T5 tokens, as the stock pipeline's default (FLUX.1-dev)

    @classmethod
    def pipe_class(cls):
        from diffusers import FluxPipeline

        return FluxPipeline

    def __init__(self, pipe, cfg, device="cpu"):
        f2 = pipe.vae_scale_factor * 2
        if cfg.height % f2 or cfg.width % f2:
            raise ConfigError(f"FLUX needs 'model.height' and 'model.width' divisible by {f2} "
                              f"(got {cfg.height}x{cfg.width})")
        super().__init__(pipe, cfg, device)

    # latent grid (unpacked) and packed shape
    def _grid(self):
        f = self.pipe.vae_scale_factor
        return 2 * (self.cfg.height // (f * 2)), 2 * (self.cfg.width // (f * 2))

    def latent_shape(self):
        h, w = self._grid()
        c = self.denoiser.config.in_channels // 4
        return ((h // 2) * (w // 2), c * 4)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        pe, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                max_sequence_length=self.text_sequence_length())
        pos = {"enc": pe, "pooled": pooled}
        if self.denoiser.config.guidance_embeds:  # embedded (distilled) guidance, one value per sample
            pos["guidance"] = torch.full((len(prompts),), float(guidance_scale), dtype=torch.float32,
                                         device=self.device)
        return {"pos": pos}

    def uses_cfg(self, guidance_scale: float) -> bool:
        return False  # FLUX.1-dev: embedded guidance only; true CFG is not offered

    def predict(self, model, x, t, cond, guidance_scale: float, detach_uncond: bool = False) -> torch.Tensor:
        """As the base, with the embedded guidance set from ``guidance_scale`` (not the value ``encode`` saw),
        so that a caller asking for another scale on the same conditioning gets it."""
        if "guidance" in cond.get("pos", {}):
            g = torch.full((x.shape[0],), float(guidance_scale), dtype=torch.float32, device=x.device)
            cond = {**cond, "pos": {**cond["pos"], "guidance": g}}
        return super().predict(model, x, t, cond, guidance_scale, detach_uncond)

    def _ids(self, seq_len: int, dtype):
        h, w = self._grid()
        img_ids = self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, dtype)
        txt_ids = torch.zeros(seq_len, 3, device=self.device, dtype=dtype)
        return txt_ids, img_ids

    def model_forward(self, model, x, t, cond):
        enc = cond["enc"]
        # the stock pipeline passes ids in the text encoder's dtype (== the weight dtype once loaded)
        txt_ids, img_ids = self._ids(enc.shape[1], self.weight_dtype)
        return model(hidden_states=x, timestep=t.to(x.dtype) / 1000, guidance=cond.get("guidance"),
                     pooled_projections=cond["pooled"], encoder_hidden_states=enc, txt_ids=txt_ids,
                     img_ids=img_ids, return_dict=False)[0]

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        return flux_schedule(self.pipe.scheduler, num_steps, shift, self.latent_shape()[0])

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """Packed (N, seq, 4C) → (N, C, H, W) latent images."""
        return self.pipe._unpack_latents(latents, self.cfg.height, self.cfg.width, self.pipe.vae_scale_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_decode(self.unpack(latents))
