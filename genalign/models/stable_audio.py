"""Stable Audio Open adapter (``StableAudioPipeline``): text-to-audio with an EDM (v-prediction) DiT (METHODS §14).

- **Conditioning** exactly as the stock ``__call__``: T5 tokens through the pipeline's ``encode_prompt`` (projected
  and masked by ``StableAudioProjectionModel``), plus the two learned number embeddings of ``seconds_start`` (0)
  and ``seconds_total`` (``model.seconds``; null = the model's full length) from ``encode_duration``; the
  cross-attention input is cat(text, start, end), the global token cat(start, end). CFG as the stock pipeline does
  it without a negative prompt: the unconditional branch has all-zero cross-attention input (text *and* duration
  tokens) and the same global token; the two v outputs are combined (scale ``sampler.guidance_scale``).
- **Denoiser call** (:meth:`model_forward`): the law's c_in preconditioning (``EDM.model_input``, c_in =
  1/√(σ²+σ_d²)) on the state, model time c_noise = atan(σ)·2/π (the schedule's ``timesteps``), and the rotary
  embedding the caller must compute (the model does not). σ is recovered from the model time; on the schedule's
  own times it is looked up exactly (the stock scheduler's σ), elsewhere σ = tan(tπ/2) in float64.
- **Schedule**: the stock scheduler's VE σ (``CosineDPMSolverMultistepScheduler.set_timesteps``: exponential from
  σ_max to σ_min, then 0). The initial state is z·√(σ_max²+1), the stock ``init_noise_sigma``.
- **Kernel / log-prob**: the law's default ``ddim``, METHODS §14's variance-exploding DDIM-η step in native EDM
  coordinates (``steps.ve_eta_step``), with the native Gaussian log-density. Why this one: at η = 1 it *is* the
  stock scheduler's first-order step (SDE-DPM-Solver++(1): x' = (σ'/σ)²x + (1−(σ'/σ)²)x̂0 + σ'√(1−(σ'/σ)²)ξ), so
  rollouts are the stock sampler with order 1 (roll out RL with ``sampler.eta: 1``); the second-order stock
  update couples two steps in one transition, which has no per-step ratio. The flow-coordinate kernels (``sde``,
  ``cps``, ...) are available through the law and marked [R] there. The last step (σ' = 0) is deterministic.
  The stock step draws ξ from a Brownian tree; we draw ξ from per-sample generators (METHODS §14), so a rollout
  equals ``__call__`` with ``solver_order=1`` when the same ξ is replayed into the stock scheduler
  (:meth:`stock_call` does that); a deterministic (η = 0) rollout has no stock counterpart (the stock sampler is
  always stochastic).
- **Decoding** only the requested crop: the latent frames covering ``seconds`` plus ``decode_margin`` frames of
  right context (the Oobleck decoder is a non-causal convolution stack) are decoded, the waveform cut to
  ``seconds·sample_rate`` samples (zero-padded where a toy decoder returns fewer than frames·hop), clamped to
  [−1, 1]: (N, channels, L).
- **LoRA** through peft directly (diffusers has no LoRA loader for ``StableAudioDiTModel``): targets ``to_q, to_k,
  to_v, to_out.0`` of ``attn1``/``attn2``. Saved as a PEFT adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``, ``PeftModel.from_pretrained(pipe.transformer, dir)`` loads it) and as genalign's
  checkpoint file ``pytorch_lora_weights.safetensors``; :meth:`apply_lora` fuses it into a pipeline, which is what
  ``genalign export --fuse`` and ``genalign sample --lora`` use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import CheckpointError, ConfigError, GenalignError
from ..registry import MODELS
from .base import Generator, Schedule, per_sample_randn, sample_generators
from .laws import EDM
from .speed import skip_inert_residual_units, speed_on

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"


def _cosine_scheduler(config, **overrides):
    try:
        from diffusers import CosineDPMSolverMultistepScheduler

        return CosineDPMSolverMultistepScheduler.from_config(config, **overrides)
    except ImportError as e:  # diffusers' dummy class raises when torchsde is missing
        raise GenalignError(f"the Stable Audio scheduler needs torchsde: pip install torchsde ({e})") from None


@MODELS.register("stable_audio")
class StableAudioGenerator(Generator):
    family = "stable_audio"
    kind = "edm"
    law_class = EDM
    modality = "audio"
    denoiser_name = "transformer"
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]  # of attn1 (self) and attn2 (cross) (METHODS §14)
    prediction_type = "v_prediction"
    decode_margin = 4  # latent frames of right context decoded beyond the crop

    @classmethod
    def pipe_class(cls):
        from diffusers import StableAudioPipeline

        return StableAudioPipeline

    @classmethod
    def load(cls, cfg, device="cpu"):
        # height/width mean nothing for audio; 0 (`genalign sample`'s "native size") must not trip the image path
        return super().load(dataclasses.replace(cfg, height=cfg.height or 1, width=cfg.width or 1), device)

    def __init__(self, pipe, cfg, device="cpu"):
        name = type(pipe.scheduler).__name__
        if name != "CosineDPMSolverMultistepScheduler":
            raise ConfigError(f"stable_audio needs the released CosineDPMSolverMultistepScheduler (EDM, v-prediction), "
                              f"got {name}")
        if pipe.scheduler.config.get("prediction_type") != "v_prediction":
            raise ConfigError(f"stable_audio supports prediction_type v_prediction only, got "
                              f"{pipe.scheduler.config.get('prediction_type')!r}")
        vae, proj, tr = pipe.vae, pipe.projection_model, pipe.transformer
        self.sample_rate = int(vae.config.sampling_rate)
        self.channels = int(vae.config.audio_channels)
        self.hop = int(vae.hop_length)
        self.max_seconds = int(tr.config.sample_size) * self.hop / self.sample_rate
        want_sr = getattr(cfg, "sample_rate", None)
        if want_sr is not None and int(want_sr) != self.sample_rate:
            raise ConfigError(f"'model.sample_rate' is {want_sr} Hz, but this pipeline generates {self.sample_rate} Hz "
                              f"(its VAE's sampling_rate); set it to {self.sample_rate} or null")
        seconds = getattr(cfg, "seconds", None)
        seconds = self.max_seconds if seconds is None else float(seconds)
        lo, hi = float(proj.config.min_value), float(proj.config.max_value)
        if not (0 < seconds <= self.max_seconds and lo <= seconds <= hi):
            raise ConfigError(f"'model.seconds' is {seconds}, but this pipeline generates durations in "
                              f"(0, {min(self.max_seconds, hi):g}] s (latent {tr.config.sample_size} frames x hop "
                              f"{self.hop} at {self.sample_rate} Hz; duration embedding range [{lo:g}, {hi:g}])")
        self.seconds = seconds
        self._sigma_table = (torch.zeros(0), torch.zeros(0, dtype=torch.float64))
        if speed_on("inert_units"):
            skip_inert_residual_units(vae)
        super().__init__(pipe, cfg, device)

    # ------------------------------------------------------------------------------------------------ LoRA (peft)
    def _setup_trainable(self) -> None:
        lcfg = self.cfg.lora
        if lcfg.rank == 0:
            self.denoiser.requires_grad_(True)
            self.denoiser.to(dtype=torch.float32)
            return
        from peft import LoraConfig, inject_adapter_in_model

        targets = self.resolve_lora_targets(lcfg.target_modules or self.default_lora_targets)
        init = {"gaussian": "gaussian", "default": True, "pissa": "pissa"}[lcfg.init]
        inject_adapter_in_model(LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, target_modules=targets,
                                           init_lora_weights=init, lora_dropout=lcfg.dropout), self.denoiser)
        for p in self.denoiser.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def _lora_layers(self, net):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in net.modules() if isinstance(m, BaseTunerLayer)]

    @contextlib.contextmanager
    def reference(self, model=None):
        """The reference network: the same DiT with its peft LoRA layers disabled (no second copy)."""
        if not self.is_lora:
            with super().reference(model) as ref:
                yield ref
            return
        layers = self._lora_layers(self.denoiser)
        for m in layers:
            m.enable_adapters(False)
        try:
            yield self.denoiser
        finally:
            for m in layers:
                m.enable_adapters(True)

    def save_lora(self, out_dir: str, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """A PEFT adapter (adapter_config.json + adapter_model.safetensors) and genalign's checkpoint file
        (pytorch_lora_weights.safetensors, keys ``transformer.<module>.lora_A.weight``, config in the header)."""
        from safetensors.torch import save_file

        sd = state_dict if state_dict is not None else self.lora_state_dict()
        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
        conf = self.denoiser.peft_config["default"]
        os.makedirs(out_dir, exist_ok=True)
        conf_dict = conf.to_dict()
        conf_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in conf_dict.items()}
        with open(os.path.join(out_dir, PEFT_CONFIG), "w") as f:
            json.dump(conf_dict, f, indent=2, default=str)
        save_file({f"base_model.model.{k}": v for k, v in sd.items()}, os.path.join(out_dir, PEFT_WEIGHTS))
        save_file({f"{self.denoiser_name}.{k}": v for k, v in sd.items()}, os.path.join(out_dir, LORA_FILE),
                  metadata={"lora_adapter_metadata": json.dumps(conf_dict, default=str)})

    lora_files = (PEFT_CONFIG, PEFT_WEIGHTS, LORA_FILE)

    @classmethod
    def fuse_lora_into(cls, pipe, path: str) -> None:
        cls.apply_lora(pipe, path)

    @classmethod
    def apply_lora(cls, pipe, path: str) -> None:
        """Fuse a saved adapter (a folder written by :meth:`save_lora`) into ``pipe.transformer`` (peft merge)."""
        from peft import PeftModel

        if not os.path.isfile(os.path.join(path, PEFT_CONFIG)) or not os.path.isfile(os.path.join(path, PEFT_WEIGHTS)):
            raise CheckpointError(f"'{path}' holds no PEFT adapter ({PEFT_CONFIG} + {PEFT_WEIGHTS}); stable_audio "
                                  f"LoRAs are PEFT folders")
        try:
            merged = PeftModel.from_pretrained(pipe.transformer, path).merge_and_unload()
        except Exception as e:  # noqa: BLE001 - peft raises various types on mismatched adapters
            raise CheckpointError(f"cannot load the LoRA '{path}': {str(e).splitlines()[0]}") from None
        pipe.transformer = merged

    # ------------------------------------------------------------------------------------------------ family hooks
    def latent_shape(self):
        tc = self.denoiser.config
        return (int(tc.in_channels), int(tc.sample_size))

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        z = per_sample_randn(self.latent_shape(), sample_generators(seeds, "cpu", salt=0), "cpu")
        return (z * self.pipe.scheduler.init_noise_sigma).to(self.device)  # the stock prepare_latents scaling

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        if shift is not None:
            raise ConfigError("'sampler.shift' applies to rectified-flow models only; leave it null for stable_audio")
        sched = _cosine_scheduler(self.pipe.scheduler.config)
        sched.set_timesteps(num_steps, device="cpu")
        sigmas = sched.sigmas.float().clone()
        ts = sched.timesteps.float().clone()
        self._sigma_table = (ts, sigmas[:-1].double())
        return Schedule(timesteps=ts, sigmas=sigmas)

    def sigma_of(self, t: torch.Tensor) -> torch.Tensor:
        """σ for model time t = atan(σ)·2/π: the schedule's exact σ where t is one of its times, else tan(tπ/2)."""
        t = t.detach().cpu().float().reshape(-1)
        sig = torch.tan(t.double() * math.pi / 2)
        ts, ss = self._sigma_table
        if ts.numel():
            hit = t[:, None] == ts[None, :]
            found = hit.any(1)
            sig = torch.where(found, ss[hit.float().argmax(1)], sig)
        return sig.float()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float) -> Dict[str, Any]:
        pipe, n = self.pipe, len(prompts)
        text = pipe.encode_prompt(list(prompts), self.device, False)
        start, end = pipe.encode_duration(0.0, self.seconds, self.device, False, n)
        enc = torch.cat([text, start, end], dim=1)
        glob = torch.cat([start, end], dim=2)
        out = {"pos": {"enc": enc, "global": glob}}
        if self.uses_cfg(guidance_scale):
            out["neg"] = {"enc": torch.zeros_like(enc), "global": glob.clone()}
        return out

    def model_forward(self, model, x, t, cond):
        n = x.shape[0]
        tt = t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(-1)
        sigma = self.sigma_of(tt).to(x.device)
        dtype = x.dtype
        x_in = self.law.model_input(x.float(), sigma).to(dtype)
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        rope = get_1d_rotary_pos_embed(self.pipe.rotary_embed_dim, x.shape[-1] + cond["global"].shape[1],
                                       use_real=True, repeat_interleave_real=False)
        return model(x_in, tt.to(x.device), encoder_hidden_states=cond["enc"].to(dtype),
                     global_hidden_states=cond["global"].to(dtype), rotary_embedding=rope, return_dict=False)[0]

    def crop_samples(self) -> int:
        return int(self.seconds * self.sample_rate)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, T) → waveforms (N, channels, seconds·sample_rate) in [−1, 1], decoding only the frames
        that cover the crop (+ ``decode_margin`` frames of right context)."""
        n_samples = self.crop_samples()
        frames = min(latents.shape[-1], math.ceil(n_samples / self.hop) + self.decode_margin)
        vae = self.pipe.vae
        audio = vae.decode(latents[..., :frames].to(vae.dtype)).sample.float()[..., :n_samples]
        if audio.shape[-1] < n_samples:  # a decoder whose output is shorter than frames·hop (toy configs): pad
            audio = torch.nn.functional.pad(audio, (0, n_samples - audio.shape[-1]))
        return audio.clamp(-1, 1)

    def stock_call(self, prompts, seeds, num_steps, guidance_scale, output_type="latent", **kw):
        """The stock ``__call__`` with ``solver_order=1`` on the same x_T, with this adapter's per-sample step noise
        replayed into the stock scheduler in place of its Brownian-tree draws (what :meth:`rollout` at η = 1 uses),
        so the two are the same computation (parity checks). ``output_type="latent"`` returns the final latents."""
        import diffusers.schedulers.scheduling_cosine_dpmsolver_multistep as sm

        shape = self.latent_shape()
        gens = sample_generators(seeds, "cpu", salt=1)
        noises = [per_sample_randn(shape, gens, "cpu") for _ in range(num_steps - 1)]
        noises.append(torch.zeros(len(seeds), *shape))  # σ' = 0: the last stock step multiplies its noise by 0

        class Replay:
            def __init__(self, x, *a, **k):
                self.i = 0

            def __call__(self, sigma, sigma_next):
                self.i += 1
                return noises[self.i - 1].to(self.device_)

        Replay.device_ = self.device
        z = per_sample_randn(shape, sample_generators(seeds, "cpu", salt=0), "cpu").to(self.device, self.weight_dtype)
        old_sched, old_sampler = self.pipe.scheduler, sm.BrownianTreeNoiseSampler
        self.pipe.scheduler = _cosine_scheduler(old_sched.config, solver_order=1)
        sm.BrownianTreeNoiseSampler = Replay
        try:
            out = self.pipe(prompt=list(prompts), audio_end_in_s=self.seconds, num_inference_steps=num_steps,
                            guidance_scale=guidance_scale, latents=z, output_type=output_type, **kw).audios
        finally:
            self.pipe.scheduler, sm.BrownianTreeNoiseSampler = old_sched, old_sampler
        return out
