"""Stable Diffusion 3 / 3.5 adapter (``StableDiffusion3Pipeline``): rectified flow, joint-attention transformer.

Conditioning: the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G pooled, T5 sequence when present).
LoRA default: Flow-GRPO's r=32, α=64 on the joint-attention projections (METHODS.md §3.8).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import ConfigError
from ..registry import MODELS
from .base import Generator, Schedule
from .laws import RectifiedFlow


def flow_schedule(pipe, num_steps: int, shift: Optional[float], image_seq_len: int, device, **override) -> Schedule:
    """Sigmas exactly as the stock pipeline computes them (scheduler.set_timesteps, incl. dynamic shifting);
    ``override``: scheduler config entries to replace (e.g. ``shift_terminal=None``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = pipe.scheduler
    if shift is not None:
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched.config, shift=shift, **override)
    else:
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched.config, **override)
    kwargs = {}
    if sched.config.get("use_dynamic_shifting", False):
        kwargs["mu"] = calculate_shift(
            image_seq_len,
            sched.config.get("base_image_seq_len", 256),
            sched.config.get("max_image_seq_len", 4096),
            sched.config.get("base_shift", 0.5),
            sched.config.get("max_shift", 1.16),
        )
    sched.set_timesteps(num_steps, device="cpu", **kwargs)
    return Schedule(timesteps=sched.timesteps.float().clone(), sigmas=sched.sigmas.float().clone())


# Flow-GRPO's LoRA targets: both streams' projections of joint attention (METHODS.md §3.8); FLUX shares them.
JOINT_ATTENTION_LORA_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
]


@MODELS.register("sd3")
class SD3Generator(Generator):
    family = "sd3"
    kind = "flow"
    law_class = RectifiedFlow
    denoiser_name = "transformer"
    default_lora_targets = JOINT_ATTENTION_LORA_TARGETS
    max_sequence_length = 256  # T5 tokens, as the stock pipeline's default

    def resolve_lora_targets(self, targets):
        """Expand suffixes to module names, leaving out ``add_q_proj`` of blocks with ``context_pre_only`` (the
        last block discards its context stream, so a LoRA there would never receive a gradient)."""
        names = []
        for name, mod in self.denoiser.named_modules():
            if not any(name == t or name.endswith("." + t) for t in targets):
                continue
            if name.endswith("attn.add_q_proj"):
                block = self.denoiser.get_submodule(name.rsplit(".attn.", 1)[0])
                if getattr(block, "context_pre_only", False):
                    continue
            names.append(name)
        return names

    def __init__(self, pipe, cfg, device="cpu"):
        # the transformer's positional-embedding table bounds the image size (diffusers fails deep in the forward)
        tcfg = pipe.transformer.config
        limit = getattr(tcfg, "pos_embed_max_size", None)
        if limit:
            px = int(limit) * int(tcfg.patch_size) * int(pipe.vae_scale_factor)
            if cfg.height > px or cfg.width > px:
                raise ConfigError(f"this SD3 transformer generates at most {px}x{px} pixels (pos_embed_max_size "
                                  f"{limit}); got {cfg.height}x{cfg.width}: lower the height/width")
        super().__init__(pipe, cfg, device)

    @classmethod
    def pipe_class(cls):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def latent_shape(self):
        c = self.denoiser.config.in_channels
        f = self.vae_scale_factor
        return (c, self.cfg.height // f, self.cfg.width // f)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        cfg = self.uses_cfg(guidance_scale) and negative
        pe, ne, pp, npool = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=cfg, negative_prompt=[""] * len(prompts) if cfg else None,
            max_sequence_length=self.text_sequence_length(),
        )
        out = {"pos": {"enc": pe, "pooled": pp}}
        if cfg:
            out["neg"] = {"enc": ne, "pooled": npool}
        return out

    def model_forward(self, model, x, t, cond):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=cond["enc"],
                     pooled_projections=cond["pooled"], return_dict=False)[0]

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        p = self.denoiser.config.patch_size
        _, h, w = self.latent_shape()
        k = getattr(self, "few_step_steps", None)  # another step count than the student's: the stock sigmas
        override = {} if k in (None, num_steps) else {"shift_terminal": None}
        return flow_schedule(self.pipe, num_steps, shift, (h // p) * (w // p), self.device, **override)

    @classmethod
    def few_step_scheduler(cls, scheduler, num_steps=None):
        """A K-step flow student's sigmas 1, (K−1)/K, …, 1/K (DMD2's 999/749/499/249 for K = 4, RTDMD's
        [1000, 750, 500, 250]/1000) instead of the stock 1, .667, .334, .001 whose last step barely moves: the stock
        scheduler's ``shift_terminal`` stretches its K sigmas to end at shift(1/K). Exact for shift 1; with a shift s
        the terminal is s/K/(1 + (s−1)/K) and the others are the stock shifted sigmas stretched to it. K = 1, or a
        scheduler with dynamic shifting: unchanged. Sample an exported student at its own K (``student.json``): the
        stock scheduler stretches any other K ≥ 2 to the same terminal and gives NaN at K = 1."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = scheduler.config
        if not num_steps or num_steps < 2 or cfg.get("use_dynamic_shifting", False):
            return scheduler
        s, t = float(cfg.get("shift", 1.0)), 1.0 / num_steps
        return FlowMatchEulerDiscreteScheduler.from_config(cfg, shift_terminal=s * t / (1 + (s - 1) * t))

    def feature_spec(self, model):
        """The middle joint-attention block's image tokens (N, L, C) (DMD2's bottleneck, for a transformer)."""
        blocks = model.transformer_blocks
        c = int(model.config.num_attention_heads * model.config.attention_head_dim)
        return blocks[len(blocks) // 2], "tokens", c

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_decode(latents)
