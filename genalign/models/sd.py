"""Stable Diffusion 1.x/2.x (``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``) adapters:
VP diffusion with an ε- or v-prediction UNet, sampled with DDIM (DDPO, Black et al., arXiv 2305.13301).

- Scheduler: the pipeline's scheduler is replaced at load by ``DDIMScheduler.from_config(its config)`` (SD1.5
  ships PNDM, SDXL Euler; DDPO does the same), with ``clip_sample`` and ``thresholding`` off because the DDIM
  kernel in steps.py implements neither. The stock pipeline then runs the very same scheduler, so a
  deterministic rollout (η = 0) reproduces ``pipe(..., eta=0.0, latents=...)``.
- Schedule: timesteps from ``DDIMScheduler.set_timesteps(T)``; ``Schedule.alphas[i]`` = ᾱ at timestep t_i and
  ``alphas[T]`` = ᾱ after the last step as DDIM's ``step`` takes it (``final_alpha_cumprod`` when t − 1000/T < 0).
  For "leading" spacing (SD1.5/SDXL configs) and "trailing" spacing with T dividing the training steps, DDIM's
  own previous-timestep rule t − 1000/T lands exactly on t_{i+1}, so the kernel is DDIM's step. For other
  spacings ("linspace") DDIM's step uses ᾱ(t_i − 1000/T) as the target of step i but evaluates the next step at
  t_{i+1}; we use ᾱ(t_{i+1}) (a proper chain of states) and log a warning that stock parity is lost.
- CFG exactly as the stock pipelines (negative prompt "", SDXL zeroes it when ``force_zeros_for_empty_prompt``),
  ``guidance_rescale`` 0. Stochastic kernel: ``ddim`` with ``sampler.eta`` (DDPO: η = 1); deterministic = η 0.
- LoRA default: the UNet attention projections ``to_q, to_k, to_v, to_out.0`` (DDPO: rank 4; rank/alpha come
  from ``model.lora``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import ConfigError
from ..registry import MODELS
from .base import Generator, Schedule
from .laws import VP

logger = logging.getLogger(__name__)

_PREDICTION_TYPES = ("epsilon", "v_prediction")


def ddim_schedule(scheduler, num_steps: int) -> Schedule:
    """Timesteps of ``DDIMScheduler.set_timesteps`` and ᾱ at each state (ᾱ after the last step as DDIM uses it)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler.config)
    if num_steps > sched.config.num_train_timesteps:
        raise ConfigError(f"'sampler.num_steps' {num_steps} exceeds the scheduler's "
                          f"{sched.config.num_train_timesteps} training timesteps")
    sched.set_timesteps(num_steps, device="cpu")
    ts = sched.timesteps.long()
    ac = sched.alphas_cumprod.float()
    ratio = sched.config.num_train_timesteps // num_steps
    prev = ts - ratio  # DDIM.step's previous timestep
    last = ac[prev[-1]] if prev[-1] >= 0 else torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float32)
    alphas = torch.cat([ac[ts], last.reshape(1).float()])
    if num_steps > 1 and not torch.equal(prev[:-1], ts[1:]):
        logger.warning("DDIM timestep spacing %r is not uniform for %d steps: transitions use ᾱ of the next "
                       "evaluated timestep, not DDIM's t-%d rule (stock-pipeline parity is lost)",
                       sched.config.timestep_spacing, num_steps, ratio)
    return Schedule(timesteps=ts.float(), alphas=alphas)


class _VPGenerator(Generator):
    kind = "vp"
    law_class = VP
    denoiser_name = "unet"
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, pipe, cfg, device="cpu"):
        from diffusers import DDIMScheduler

        pred = pipe.scheduler.config.get("prediction_type", "epsilon")
        if pred not in _PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type {pred!r} is not supported; valid choices: "
                              + ", ".join(_PREDICTION_TYPES))
        if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
            raise ConfigError("UNets with a guidance embedding (time_cond_proj_dim, LCM-distilled) are not supported")
        f = pipe.vae_scale_factor
        if cfg.height % f or cfg.width % f:
            raise ConfigError(f"'model.height' and 'model.width' must be divisible by {f} "
                              f"(got {cfg.height}x{cfg.width})")
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)
        self.prediction_type = pred
        super().__init__(pipe, cfg, device)

    def latent_shape(self):
        f = self.pipe.vae_scale_factor
        return (self.denoiser.config.in_channels, self.cfg.height // f, self.cfg.width // f)

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        if shift is not None:
            raise ConfigError("'sampler.shift' applies to rectified-flow models only; leave it null for sd/sdxl")
        return ddim_schedule(self.pipe.scheduler, num_steps)

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.pipe.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:  # the stock SDXL pipeline decodes in fp32 (the fp16 VAE overflows)
            vae.to(torch.float32)
        try:
            z = self._unscale(latents.to(vae.dtype))
            img = vae.decode(z, return_dict=False)[0].float()
        finally:
            if upcast:
                vae.to(torch.float16)
        return (img / 2 + 0.5).clamp(0, 1)

    @classmethod
    def few_step_scheduler(cls, scheduler, num_steps=None):
        """DDIM with "trailing" spacing: K steps at (999, 749, 499, 249) for K = 4, (999,) for K = 1 — DMD2's
        student timesteps (``sd_unified_model.py``); "leading" spacing would start a 1-step student at t = 1."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler.config, clip_sample=False, thresholding=False,
                                         timestep_spacing="trailing")

    def feature_spec(self, model):
        """The UNet's mid-block output (N, C, H, W), DMD2's GAN feature."""
        return model.mid_block, "conv", int(model.config.block_out_channels[-1])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`decode` (posterior mode; SDXL's latents_mean/std when the VAE declares them)."""
        vae = self.pipe.vae
        z = vae.encode((images * 2 - 1).to(self.device, vae.dtype), return_dict=False)[0].mode().float()
        c = vae.config
        mean, std = getattr(c, "latents_mean", None), getattr(c, "latents_std", None)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device)
            s = torch.tensor(std).view(1, -1, 1, 1).to(z.device)
            return (z - m) * c.scaling_factor / s
        return z * c.scaling_factor

    def stock_call_kwargs(self):
        return {"eta": 0.0}  # the stock DDIM __call__ at η = 0 unless given


@MODELS.register("sd")
class SDGenerator(_VPGenerator):
    """SD 1.x / 2.x: one CLIP text encoder, cross-attention on its last hidden states."""

    family = "sd"

    @classmethod
    def pipe_class(cls):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    @classmethod
    def extra_load_kwargs(cls, cfg):
        return {"safety_checker": None, "requires_safety_checker": False}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        cfg = self.uses_cfg(guidance_scale) and negative
        pe, ne = self.pipe.encode_prompt(list(prompts), self.device, 1, cfg, negative_prompt=None)
        out = {"pos": {"enc": pe}}
        if cfg:
            out["neg"] = {"enc": ne}
        return out

    def model_forward(self, model, x, t, cond):
        return model(x, t, encoder_hidden_states=cond["enc"], return_dict=False)[0]


@MODELS.register("sdxl")
class SDXLGenerator(_VPGenerator):
    """SDXL: CLIP-L ⊕ CLIP-G penultimate hidden states; added conditioning = pooled CLIP-G ``text_embeds`` and
    the six micro-conditioning ``time_ids`` (original size, crop (0, 0), target size = model.height × width)."""

    family = "sdxl"

    @classmethod
    def pipe_class(cls):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    @classmethod
    def extra_load_kwargs(cls, cfg):
        return {"add_watermarker": False}  # decode() does not watermark, so neither does stock_call

    def _time_ids(self, n: int, dtype) -> torch.Tensor:
        size = (self.cfg.height, self.cfg.width)
        te2 = self.pipe.text_encoder_2
        proj = te2.config.projection_dim if te2 is not None else None
        if proj is None:
            raise ConfigError("SDXL needs text_encoder_2 (CLIPTextModelWithProjection) for the pooled text embeds")
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=proj)
        return ids.to(self.device).repeat(n, 1)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        cfg = self.uses_cfg(guidance_scale) and negative
        pe, ne, pp, npp = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                                  negative_prompt=None)
        ids = self._time_ids(len(prompts), pe.dtype)
        out = {"pos": {"enc": pe, "text_embeds": pp, "time_ids": ids}}
        if cfg:
            out["neg"] = {"enc": ne, "text_embeds": npp, "time_ids": ids.clone()}
        return out

    def model_forward(self, model, x, t, cond):
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        return model(x, t, encoder_hidden_states=cond["enc"], added_cond_kwargs=added, return_dict=False)[0]

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        c = self.pipe.vae.config
        mean, std = getattr(c, "latents_mean", None), getattr(c, "latents_std", None)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
            s = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
            return z * s / c.scaling_factor + m
        return z / c.scaling_factor
