"""Stable Audio 3 adapter (``StableAudio3Pipeline``): text-to-audio with a rectified-flow DiT (v = ε − x0).

Mirrors the stock ``__call__`` (diffusers 0.42):

- **Conditioning**: T5Gemma tokens through the pipeline's ``encode_prompt`` (padded to the tokenizer's length, at
  most 256, with its attention mask), the duration embedding of ``model.seconds`` from ``encode_duration``
  (``StableAudio3DurationEmbedder``) as the global (AdaLN) input *and* appended as one extra cross-attention token
  (``prepare_cross_attention``, mask 1). CFG as the stock pipeline: only for ``guidance_scale > 1``, the
  unconditional branch is the empty prompt "" encoded the same way with the same duration token/global input,
  batched [uncond, cond], v = v_u + g·(v_c − v_u). (The distilled SA3 Medium bakes CFG in: use guidance 1.)
- **Schedule**: the stock log-SNR schedule (``logsnr_sigma_schedule(N, logsnr_min, logsnr_max)``: σ = sigmoid(−λ),
  λ linear from ``logsnr_min`` to ``logsnr_max``, σ_0 forced to 1) passed to the pipeline's
  ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)`` (its shift applies; terminal 0 appended); the
  DiT's time is the scheduler's ``timesteps`` (σ·``num_train_timesteps``). The initial state is pure noise
  z ~ N(0, I) of shape (latent_dim, ⌈seconds·sr / downsampling⌉), as ``prepare_latents`` draws it.
- **Kernels / log-prob**: the rectified-flow law (``RectifiedFlow``) and its per-step kernels, as SD3 (Flow-GRPO
  SDE by default; METHODS §2). Relation to the stock samplers: ``kernel: ode`` is the stock Euler step
  (``stochastic_sampling=False``, the base checkpoint), so a deterministic rollout equals ``__call__`` on the
  same x_T; the stock "ping-pong" step of the distilled checkpoint (``stochastic_sampling=True``: x̂0 = x − σv,
  x' = (1−σ')x̂0 + σ'ξ) is the CPS kernel at ``noise_level: 1`` (μ = (1−σ')x̂0, ρ = σ'), so ``kernel: cps`` with
  ``noise_level: 1.0`` rolls out the stock distilled sampler with an exact Gaussian log-prob (last step
  deterministic: σ' = 0); :meth:`stock_call` with ``stochastic=True`` replays the same per-sample noise.
- **Decoding**: the latent is sized to the requested ``seconds`` (no ``silence_padding_duration``), decoded by
  ``AutoencoderSAME`` and cut to ``int(seconds·sample_rate)`` samples, clamped to [−1, 1]: (N, channels, L), as the
  stock pipeline (zero-padded should a decoder return fewer samples).
- **LoRA** through peft (``StableAudio3DiTModel`` has no diffusers LoRA loader), as ``stable_audio``: targets the
  self-attention ``to_qkv``/``to_out`` and cross-attention ``to_q``/``to_kv``/``to_out`` of each DiT block; saved
  as a PEFT adapter + genalign's ``pytorch_lora_weights.safetensors``; ``genalign export --fuse`` merges it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import ConfigError
from ..registry import MODELS
from .base import Generator, Schedule, per_sample_randn, sample_generators
from .laws import RectifiedFlow
from .stable_audio import StableAudioGenerator


def _flow_scheduler(config, **overrides):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)


@MODELS.register("stable_audio3")
class StableAudio3Generator(StableAudioGenerator):
    """Reuses ``stable_audio``'s peft LoRA machinery (inject, reference = adapters off, PEFT save, fuse) only."""

    family = "stable_audio3"
    kind = "flow"
    law_class = RectifiedFlow
    modality = "audio"
    denoiser_name = "transformer"
    default_lora_targets = ["to_qkv", "to_out", "to_q", "to_kv"]  # self_attn / cross_attn of each DiT block
    prediction_type = Generator.prediction_type  # not stable_audio's v_prediction (unused by the flow law)
    default_seconds = 10.0  # the stock __call__'s duration
    logsnr_min = -6.2  # the stock __call__'s schedule defaults
    logsnr_max = 2.0

    @classmethod
    def pipe_class(cls):
        from diffusers import StableAudio3Pipeline

        return StableAudio3Pipeline

    def __init__(self, pipe, cfg, device="cpu"):
        name = type(pipe.scheduler).__name__
        if name != "FlowMatchEulerDiscreteScheduler":
            raise ConfigError(f"stable_audio3 needs the released FlowMatchEulerDiscreteScheduler (rectified flow), "
                              f"got {name}")
        vae, dur = pipe.vae, pipe.duration_embedder
        self.sample_rate = int(vae.config.sampling_rate)
        self.channels = int(vae.config.audio_channels)
        self.hop = int(vae.downsampling_ratio)
        want_sr = getattr(cfg, "sample_rate", None)
        if want_sr is not None and int(want_sr) != self.sample_rate:
            raise ConfigError(f"'model.sample_rate' is {want_sr} Hz, but this pipeline generates {self.sample_rate} Hz "
                              f"(its VAE's sampling_rate); set it to {self.sample_rate} or null")
        seconds = getattr(cfg, "seconds", None)
        seconds = self.default_seconds if seconds is None else float(seconds)
        lo, hi = float(dur.config.min_val), float(dur.config.max_val)
        if not (0 < seconds <= hi and seconds >= lo) or int(seconds * self.sample_rate) < 1:
            raise ConfigError(f"'model.seconds' is {seconds}, but this pipeline generates durations in "
                              f"(0, {hi:g}] s (duration embedding range [{lo:g}, {hi:g}]) of at least one sample "
                              f"at {self.sample_rate} Hz")
        self.seconds = seconds
        Generator.__init__(self, pipe, cfg, device)  # not StableAudioGenerator's (EDM scheduler checks)

    # ------------------------------------------------------------------------------------------------ family hooks
    def latent_shape(self):
        frames = int(math.ceil(self.seconds * self.sample_rate / self.hop))  # the stock latent_length (no padding)
        return (int(self.pipe.vae.config.latent_dim), frames)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return Generator.initial_noise(self, seeds)  # z ~ N(0, I): σ_0 = 1 (no init_noise_sigma scaling)

    def stock_sigmas(self, num_steps: int):
        from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule

        return logsnr_sigma_schedule(num_steps, self.logsnr_min, self.logsnr_max)

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        sched = _flow_scheduler(self.pipe.scheduler.config, **({} if shift is None else {"shift": shift}))
        sched.set_timesteps(sigmas=self.stock_sigmas(num_steps), device="cpu")
        return Schedule(timesteps=sched.timesteps.float().clone(), sigmas=sched.sigmas.float().clone())

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        pipe, n = self.pipe, len(prompts)
        glob = pipe.encode_duration(self.seconds, self.device, 1, n)

        def branch(texts):
            emb, mask = pipe.encode_prompt(list(texts), self.device, 1)
            enc, mask = pipe.prepare_cross_attention(emb, mask, glob)
            return {"enc": enc, "mask": mask, "global": glob.clone()}

        out = {"pos": branch(prompts)}
        if self.uses_cfg(guidance_scale) and negative:
            out["neg"] = branch([""] * n)
        return out

    def model_forward(self, model, x, t, cond):
        n = x.shape[0]
        tt = t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(-1)
        dtype = x.dtype
        return model(x, tt.to(x.device), encoder_hidden_states=cond["enc"].to(dtype),
                     global_hidden_states=cond["global"].to(dtype), encoder_attention_mask=cond["mask"],
                     return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, T) → waveforms (N, channels, int(seconds·sample_rate)) in [−1, 1] (the stock crop)."""
        n_samples = self.crop_samples()
        vae = self.pipe.vae
        audio = vae.decode(latents.to(self.device, vae.dtype)).sample.float()[..., :n_samples]
        if audio.shape[-1] < n_samples:
            audio = torch.nn.functional.pad(audio, (0, n_samples - audio.shape[-1]))
        return audio.clamp(-1, 1)

    def feature_spec(self, model):
        return Generator.feature_spec(self, model)

    def stock_call(self, prompts, seeds, num_steps, guidance_scale, output_type="latent", stochastic=False, **kw):
        """The stock ``__call__`` on this adapter's x_T with ``stochastic_sampling=stochastic``: False = the Euler
        sampler (a ``kernel: ode`` rollout's counterpart); True = the ping-pong sampler with the per-sample
        generators of :meth:`rollout`'s step noise (a ``kernel: cps, noise_level: 1`` rollout's counterpart).
        ``output_type="latent"`` returns the final latents, "pt" the decoded crop."""
        z = self.initial_noise(seeds).to(self.weight_dtype)
        old = self.pipe.scheduler
        self.pipe.scheduler = _flow_scheduler(old.config, stochastic_sampling=bool(stochastic))
        try:
            return self.pipe(prompt=list(prompts), duration=self.seconds, num_inference_steps=num_steps,
                             logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max, guidance_scale=guidance_scale,
                             latents=z, generator=sample_generators(seeds, "cpu", salt=1), output_type=output_type,
                             **kw).audios
        finally:
            self.pipe.scheduler = old
