"""The model-family contract: a :class:`Generator` wraps a stock diffusers pipeline and its (LoRA'd) denoiser.

Only the family adapters (sd3.py, flux.py, sd.py) know how a family encodes prompts, calls its denoiser and
decodes latents. Everything else — sampling with per-step log-probs, recomputing log-probs for training,
the reference policy (the same network with the adapter disabled), LoRA saving in the diffusers layout —
is written once here, against four small family hooks:

    encode(prompts, guidance_scale) -> cond          (opaque dict of batch-first tensors, CPU-sliceable)
    model_forward(model, x, t, cond) -> raw output   (velocity for rectified flow, ε/v for VP models)
    initial_noise(seeds) -> x_T
    decode(latents) -> samples in [0, 1] (images) or [-1, 1] (audio)

Randomness is per sample: the initial noise and every SDE step's noise of sample i come from its own
``torch.Generator`` seeded by ``seeds[i]``. A rollout is therefore identical however a batch is split across
processes or micro-batches, which is what makes multi-process runs reproduce single-process ones.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import ModelConfig, SamplerConfig
from ..errors import CheckpointError, ConfigError
from . import steps as K
from .experts import TwoExperts
from .weights import WeightsIO
from .laws import NoiseLaw, RectifiedFlow
from .speed import compile_repeated_blocks, expand_cond, lora_layers, speed_on  # noqa: F401

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}



@dataclass
class Schedule:
    """The discretisation of one sampling run. Flow: ``sigmas`` (T+1,), ending at 0. VP: ``alphas`` (T+1,).
    EDM: ``sigmas`` (VE σ). ``Generator.law.schedule_times(schedule)`` picks the one its law uses."""

    timesteps: torch.Tensor  # (T,) the values passed to the denoiser
    sigmas: Optional[torch.Tensor] = None  # flow
    alphas: Optional[torch.Tensor] = None  # VP: ᾱ at each state (T+1,), alphas[T] = final ᾱ

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


@dataclass
class Rollout:
    """A batch of sampled trajectories (N samples, T steps)."""

    prompts: List[str]
    seeds: List[int]
    group_ids: torch.Tensor  # (N,) long: samples with the same id share a prompt
    cond: Dict[str, Any]  # adapter-owned conditioning, batch-first
    states: torch.Tensor  # (N, T+1, *latent) float32: x_T (noise) ... x_0 (clean latent)
    log_probs: torch.Tensor  # (N, T) float32, NaN where the step was deterministic
    means: Optional[torch.Tensor]  # (N, T, *latent) transition means (stored only when asked)
    train_steps: torch.Tensor  # (N, K) long: which steps are trained for each sample
    schedule: Schedule
    guidance_scale: float
    samples: Optional[torch.Tensor] = None  # decoded outputs
    metadata: List[Dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, idx: Sequence[int]) -> "Rollout":
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        return Rollout(
            prompts=[self.prompts[i] for i in idx_t.tolist()],
            seeds=[self.seeds[i] for i in idx_t.tolist()],
            group_ids=self.group_ids[idx_t],
            cond=index_cond(self.cond, idx_t),
            states=self.states[idx_t],
            log_probs=self.log_probs[idx_t],
            means=None if self.means is None else self.means[idx_t],
            train_steps=self.train_steps[idx_t],
            schedule=self.schedule,
            guidance_scale=self.guidance_scale,
            samples=None if self.samples is None else self.samples[idx_t],
            metadata=[self.metadata[i] for i in idx_t.tolist()] if self.metadata else [],
        )


def index_cond(cond: Dict[str, Any], idx: torch.Tensor) -> Dict[str, Any]:
    out = {}
    for k, v in cond.items():
        if torch.is_tensor(v) and v.ndim > 0:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, dict):
            out[k] = index_cond(v, idx)
        else:
            out[k] = v
    return out


def cat_cond(conds: List[Dict[str, Any]]) -> Dict[str, Any]:
    out = {}
    for k in conds[0]:
        v = conds[0][k]
        if torch.is_tensor(v) and v.ndim > 0:
            out[k] = torch.cat([c[k] for c in conds])
        elif isinstance(v, dict):
            out[k] = cat_cond([c[k] for c in conds])
        else:
            out[k] = v
    return out


def sample_generators(seeds: Sequence[int], device, salt: int = 0) -> List[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed((int(s) * 1_000_003 + salt) % (2**63 - 1))
        gens.append(g)
    return gens


def per_sample_randn(shape, generators: List[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])


def _null_components(pipe_cls, cfg: ModelConfig) -> Dict[str, Any]:
    """Components saved as ``[null, null]`` (e.g. SD3 without T5) must be passed as None explicitly."""
    try:
        index = pipe_cls.load_config(cfg.path, revision=cfg.revision)
    except Exception:  # noqa: BLE001 - from_pretrained reports the real problem just after
        return {}
    return {k: None for k, v in index.items() if isinstance(v, (list, tuple)) and list(v) == [None, None]}


def native_size(pipe, denoiser_name: str) -> Tuple[int, int]:
    """The size (height, width) in pixels that the stock pipeline's ``__call__`` generates by default:
    ``default_sample_size`` (or the denoiser's ``sample_size``) × the VAE scale factor."""
    size = getattr(pipe, "default_sample_size", None)
    if size is None:
        size = getattr(getattr(pipe, denoiser_name).config, "sample_size", None)
    if size is None:
        raise ConfigError("the pipeline declares no default size; set the height and width explicitly")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    f = int(pipe.vae_scale_factor)
    return int(h) * f, int(w) * f


class Generator(WeightsIO, TwoExperts):
    """Base class of the model-family adapters. See the module docstring for the hooks a family implements."""

    family: str = "base"
    kind: str = "flow"  # flow | vp: the name of law_class (kept for code inside models/ and its tests)
    law_class: type = RectifiedFlow  # the family's noise law (laws.py); an instance is built per model as .law
    modality: str = "image"
    denoiser_name: str = "transformer"
    default_lora_targets: List[str] = []
    max_sequence_length: Optional[int] = None  # T5 tokens of the stock pipeline's default, for families with T5

    def output_spec(self):
        """What one sample is (:class:`genalign.media.OutputSpec`): an image of ``cfg.height`` x ``cfg.width`` pixels,
        or for an audio family its ``seconds``, ``sample_rate`` and ``channels`` attributes (set by the adapter)."""
        from ..media import OutputSpec

        if self.modality == "audio":
            try:
                return OutputSpec("audio", seconds=float(self.seconds), sample_rate=int(self.sample_rate),
                                  channels=int(self.channels))
            except AttributeError as e:
                raise ConfigError(f"audio family '{self.family}' must set seconds, sample_rate and channels ({e})")
        return OutputSpec(self.modality, height=int(self.cfg.height), width=int(self.cfg.width))

    @classmethod
    def pipe_class(cls):
        """The stock diffusers pipeline class this family loads (imported lazily)."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline

    def __init__(self, pipe, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.pipe = pipe
        self.cfg = cfg
        self.device = torch.device(device)
        self.weight_dtype = DTYPES[cfg.dtype]
        self.ref_denoiser = None  # full fine-tuning only: a frozen copy for the KL reference
        self.law: NoiseLaw = self.make_law()
        pipe.set_progress_bar_config(disable=True)
        for name, comp in pipe.components.items():
            if isinstance(comp, torch.nn.Module):
                comp.requires_grad_(False)
                p0 = next(comp.parameters(), None)
                if p0 is not None and (p0.device != self.device or p0.dtype != self.weight_dtype):
                    comp.to(self.device, dtype=self.weight_dtype)
        self._setup_trainable()
        if cfg.base_from is not None:
            self.make_reference()  # the base expert, copied before any checkpoint is loaded (LoRA: a no-op)
        if cfg.gradient_checkpointing and hasattr(self.denoiser, "enable_gradient_checkpointing"):
            self.denoiser.enable_gradient_checkpointing()
        if cfg.enable_xformers:
            if self.device.type != "cuda":
                raise ConfigError("'model.enable_xformers' needs a CUDA device; leave it false on CPU")
            self.denoiser.enable_xformers_memory_efficient_attention()
        if cfg.compile:
            self.compiled_blocks = compile_repeated_blocks(self.denoiser, cfg.compile_backend)

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, cfg: ModelConfig, device="cpu") -> "Generator":
        if not cfg.path:
            raise ConfigError("'model.path' is empty; give a hub id or a local diffusers pipeline folder")
        local = os.path.exists(cfg.path)
        if not local and (cfg.path.startswith((".", "/", "~")) or os.sep in cfg.path.rstrip("/").split("/", 1)[-1]):
            raise CheckpointError(f"model path '{cfg.path}' does not exist")
        if local and not os.path.exists(os.path.join(cfg.path, "model_index.json")):
            raise CheckpointError(f"'{cfg.path}' is not a diffusers pipeline folder (no model_index.json)")
        pipe_cls = cls.pipe_class()
        kwargs = dict(dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.variant:
            kwargs["variant"] = cfg.variant
        kwargs.update(_null_components(pipe_cls, cfg))
        kwargs.update(cls.extra_load_kwargs(cfg))
        try:
            pipe = pipe_cls.from_pretrained(cfg.path, **kwargs)
        except (OSError, EnvironmentError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load pipeline '{cfg.path}': {msg}") from None
        if not cfg.height or not cfg.width:  # 0 = the stock pipeline's own default size (e.g. `genalign sample`)
            import dataclasses

            h, w = native_size(pipe, cls.denoiser_name)
            cfg = dataclasses.replace(cfg, height=cfg.height or h, width=cfg.width or w)
        return cls(pipe, cfg, device)

    @classmethod
    def extra_load_kwargs(cls, cfg: ModelConfig) -> Dict[str, Any]:
        return {}

    # ---------------------------------------------------------------------------------------------- parameters
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    def _setup_trainable(self) -> None:
        lcfg = self.cfg.lora
        if lcfg.rank == 0:  # full fine-tuning
            self.denoiser.requires_grad_(True)
            self.denoiser.to(dtype=torch.float32)
            return
        from peft import LoraConfig

        self._check_lora_targets(lcfg.target_modules or self.default_lora_targets)
        targets = self.resolve_lora_targets(lcfg.target_modules or self.default_lora_targets)
        init = {"gaussian": "gaussian", "default": True, "pissa": "pissa"}[lcfg.init]
        self.denoiser.add_adapter(
            LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, target_modules=targets, init_lora_weights=init,
                       lora_dropout=lcfg.dropout)
        )
        for p in self.denoiser.parameters():  # trainable LoRA weights in fp32 (mixed precision recipe)
            if p.requires_grad:
                p.data = p.data.float()

    def _check_lora_targets(self, targets: List[str]) -> None:
        """Every LoRA target must name at least one adaptable module (peft's rule: the module's full name, or its
        dotted suffix); one line with some valid names otherwise, instead of peft's error deep in add_adapter."""
        adaptable = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Embedding)
        names = [n for n, mod in self.denoiser.named_modules() if n and isinstance(mod, adaptable)]
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched and (self.cfg.lora.target_modules or len(unmatched) == len(targets)):
            suffixes = sorted({n.split(".")[-1] for n in names if not n.split(".")[-1].isdigit()})
            key = "'model.lora.target_modules'" if self.cfg.lora.target_modules else "the family's default targets"
            raise ConfigError(f"{key} {unmatched} match no module of the {self.denoiser_name}; valid names "
                              f"include: {', '.join(suffixes[:12])}{', ...' if len(suffixes) > 12 else ''}")

    def resolve_lora_targets(self, targets: List[str]) -> List[str]:
        """Hook for families to drop target modules whose output the network discards (no gradient)."""
        return list(targets)

    @property
    def is_lora(self) -> bool:
        return self.cfg.lora.rank > 0

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def named_trainable_parameters(self):
        return [(n, p) for n, p in self.denoiser.named_parameters() if p.requires_grad]

    def make_reference(self) -> None:
        """For full fine-tuning with a KL term: keep a frozen copy (LoRA runs disable the adapter instead)."""
        if not self.is_lora and self.ref_denoiser is None:
            self.ref_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self, model=None):
        """Yield the reference network: the same denoiser with its LoRA adapter disabled (no second copy)."""
        if not self.is_lora:
            if self.ref_denoiser is None:
                raise RuntimeError("full fine-tuning KL needs make_reference() before training")
            yield self.ref_denoiser
            return
        net = self.denoiser
        layers = lora_layers(self) if speed_on("adapter_toggle") else None
        if layers is None:
            net.disable_adapters()
        else:
            for m in layers:
                m._disable_adapters = True
        try:
            yield net
        finally:
            if layers is None:
                net.enable_adapters()
            else:
                for m in layers:
                    m._disable_adapters = False

    def encode(self, prompts: Sequence[str], guidance_scale: float, negative: bool = True) -> Dict[str, Any]:
        """{"pos": ..., "neg": ...} for the prompts; ``negative=False`` leaves the unconditional branch out (the base
        then adds it from :meth:`negative_conditioning`). Callers use :meth:`conditioning`."""
        raise NotImplementedError

    def model_forward(self, model, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self) -> tuple:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def schedule(self, num_steps: int, shift: Optional[float] = None) -> Schedule:
        raise NotImplementedError

    def encode_for(self, prompts: Sequence[str], guidance_scale: float,
                   metadata: Optional[Sequence[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """Conditioning of a batch whose prompts carry per-prompt fields (a JSONL prompts file: duration, target
        text, ...). Families whose conditioning reads such fields (e.g. an audio model's duration) override this;
        the default encodes the prompts alone (:meth:`conditioning`: each unique prompt once)."""
        return self.conditioning(prompts, guidance_scale)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def make_law(self) -> NoiseLaw:
        """This model's noise law, built from its (stock or replaced) scheduler."""
        return self.law_class.from_scheduler(self.pipe.scheduler)

    # ---------------------------------------------------------------------------------------------- shared logic
    def conditioning(self, prompts: Sequence[str], guidance_scale: float) -> Dict[str, Any]:
        """``encode`` for a batch, without repeated work: each unique prompt is encoded once and shared by its
        copies (a GRPO group's k samples), and the negative (unconditional) branch is encoded once per run and
        cached on the adapter (the text encoders are frozen). Same values as ``encode(prompts, guidance_scale)``."""
        prompts = list(prompts)
        if not speed_on("encode_cache"):
            return self.encode(prompts, guidance_scale)
        first: Dict[str, int] = {}
        idx = torch.tensor([first.setdefault(p, len(first)) for p in prompts], dtype=torch.long)
        uniq = list(first)
        if "negative" not in inspect.signature(self.encode).parameters:  # a family without the split hook
            return index_cond(self.encode(uniq, guidance_scale), idx)
        cond = index_cond(self.encode(uniq, guidance_scale, negative=False), idx)
        if self.uses_cfg(guidance_scale):
            cond["neg"] = expand_cond(self.negative_conditioning(guidance_scale), len(prompts))
        return cond

    def negative_conditioning(self, guidance_scale: float) -> Dict[str, Any]:
        """The unconditional branch's conditioning for one sample, encoded on first use and kept."""
        cache = self.__dict__.setdefault("_negative_cache", {})
        key = (float(guidance_scale), self.text_sequence_length())
        if key not in cache:
            cache[key] = index_cond(self.encode([""], guidance_scale)["neg"], torch.zeros(1, dtype=torch.long))
        return cache[key]

    def text_sequence_length(self) -> Optional[int]:
        """T5 tokens per prompt: ``model.max_sequence_length``, else the stock pipeline's default (None: no T5)."""
        return self.cfg.max_sequence_length or self.max_sequence_length

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) latents → images in [0, 1]: undo the VAE's scaling/shift, decode, map [−1, 1] → [0, 1]."""
        vae = self.pipe.vae
        z = z.to(vae.dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        img = vae.decode(z, return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → latents as the denoiser sees them (the inverse of :meth:`vae_decode`; the posterior
        mode, so real-data latents are deterministic)."""
        vae = self.pipe.vae
        z = vae.encode((images * 2 - 1).to(self.device, vae.dtype), return_dict=False)[0].mode().float()
        return (z - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Real images in [0, 1] → the latents this family's denoiser works on (distillation's GAN real data)."""
        return self.vae_encode(images)

    # -------------------------------------------------------------------------------- few-step distillation
    def prepare_few_step(self, num_steps: Optional[int] = None) -> None:
        """The few-step student's schedule for ``schedule(K)`` (VP: trailing timesteps from pure noise; flow: the
        student's K training sigmas when ``num_steps`` is given)."""
        self.pipe.scheduler = self.few_step_scheduler(self.pipe.scheduler, num_steps)
        self.few_step_steps = num_steps
        self.law = self.make_law()

    @classmethod
    def few_step_scheduler(cls, scheduler, num_steps: Optional[int] = None):
        """The stock scheduler that samples a few-step student exactly as training does (``genalign export``)."""
        return scheduler

    def feature_spec(self, model) -> Tuple[torch.nn.Module, str, int]:
        """(layer, kind, channels) of the denoiser's bottleneck features for a GAN head (DMD2 ``cls_pred_branch``):
        ``kind`` "conv" for (N, C, H, W) maps, "tokens" for (N, L, C) sequences. Families without one raise."""
        raise ConfigError(f"model family '{self.family}' exposes no denoiser features for a GAN head; set the "
                          f"algorithm's gan: false (families with features: sd3, sd, sdxl)")

    @staticmethod
    def pick_features(output) -> torch.Tensor:
        """The feature tensor in a feature layer's output (the last tensor of a tuple, e.g. SD3's image stream)."""
        if isinstance(output, (tuple, list)):
            output = [o for o in output if torch.is_tensor(o)][-1]
        return output

    def predict_with_features(self, model, x, t, cond_pos) -> Tuple[torch.Tensor, torch.Tensor]:
        """(output, bottleneck features) of one unguided forward pass (the fake score of DMD2's GAN)."""
        layer = self.feature_spec(getattr(model, "module", model))[0]
        store: Dict[str, torch.Tensor] = {}
        hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("f", self.pick_features(o)))
        try:
            out = self.predict(model, x, t, {"pos": cond_pos}, 1.0)
        finally:
            hook.remove()
        return out, store["f"].float()

    def stock_call_kwargs(self) -> Dict[str, Any]:
        """Family-specific keyword arguments of the stock ``__call__`` used by :meth:`stock_call`."""
        n = self.text_sequence_length()
        return {} if n is None else {"max_sequence_length": n}

    def stock_call(self, prompts, seeds, num_steps, guidance_scale, **kw):
        """The stock pipeline's ``__call__`` on the same initial noise (parity checks and benchmarks)."""
        lat = self.initial_noise(seeds).to(self.weight_dtype)
        return self.pipe(prompt=list(prompts), num_inference_steps=num_steps, guidance_scale=guidance_scale,
                         height=self.cfg.height, width=self.cfg.width, latents=lat, output_type="pt",
                         **{**self.stock_call_kwargs(), **kw}).images

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        gens = sample_generators(seeds, "cpu", salt=0)
        return per_sample_randn(self.latent_shape(), gens, "cpu").to(self.device)

    def predict(self, model, x, t, cond, guidance_scale: float, detach_uncond: bool = False) -> torch.Tensor:
        """The (CFG-guided) denoiser output at state x and timestep value t, in float32."""
        n = x.shape[0]
        tt = t.expand(n) if t.ndim == 0 else t
        if self.uses_cfg(guidance_scale) and "neg" in cond:
            x_in = torch.cat([x, x]).to(self.weight_dtype_for(model))
            c_in = cat_cond([cond["neg"], cond["pos"]])
            out = self.model_forward(model, x_in, torch.cat([tt, tt]), c_in).float()
            uncond, text = out.chunk(2)
            if detach_uncond:
                uncond = uncond.detach()
            return uncond + guidance_scale * (text - uncond)
        return self.model_forward(model, x.to(self.weight_dtype_for(model)), tt, cond["pos"]).float()

    def weight_dtype_for(self, model) -> torch.dtype:
        return self.weight_dtype if self.is_lora else torch.float32

    def kernel_step(self, out, x, i: int, sch: Schedule, scfg: SamplerConfig, stochastic: bool,
                    prev_sample=None, noise=None) -> K.StepOut:
        """One transition from state i to i+1 with the configured kernel (ODE / DDIM-η=0 when not stochastic)."""
        # always in float32, also inside a bf16/fp16 autocast region (the reference forward runs in one): the step
        # kernels' σ, log and exp arithmetic must not follow the network into half precision
        with torch.autocast(self.device.type, enabled=False):
            return self.law.kernel_step(out.float(), x.float(), i, sch, scfg, stochastic,
                                        prev_sample=None if prev_sample is None else prev_sample.float(),
                                        noise=None if noise is None else noise.float())

    prediction_type: str = "epsilon"

    def stochastic_mask(self, num_steps: int, scfg: SamplerConfig, window_start: Optional[int]) -> torch.Tensor:
        """Which steps use the stochastic kernel: all (default) or only an SDE window (window schemes)."""
        m = torch.ones(num_steps, dtype=torch.bool)
        if scfg.kernel == "ode":
            m[:] = False
        elif scfg.train_timesteps in ("window", "sliding_window") and window_start is not None:
            m[:] = False
            m[window_start : window_start + scfg.window_size] = True
        if self.law.last_step_deterministic(scfg.kernel):
            m[-1] = False  # e.g. CPS: σ' = 0, a deterministic last step
        return m

    @torch.no_grad()
    def rollout(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        scfg: SamplerConfig,
        *,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        stochastic: bool = True,
        group_ids: Optional[torch.Tensor] = None,
        noise_seeds: Optional[Sequence[int]] = None,
        window_start: Optional[int] = None,
        train_steps: Optional[torch.Tensor] = None,
        store_means: bool = False,
        decode: bool = True,
        model=None,
        cond: Optional[Dict[str, Any]] = None,
        metadata: Optional[Sequence[Dict[str, Any]]] = None,
    ) -> Rollout:
        """Sample trajectories with per-step log-probs (NaN on deterministic steps).

        ``seeds`` drive the per-step SDE noise of each sample; ``noise_seeds`` (default = ``seeds``) drive the
        initial noise, so a group can share x_T (DanceGRPO's ``init_same_noise``) while its SDE noise differs.
        """
        model = model if model is not None else self.denoiser
        T = num_steps or scfg.num_steps
        g = scfg.guidance_scale if guidance_scale is None else guidance_scale
        sch = self.schedule(T, scfg.shift)
        own_cond = cond is None
        if own_cond:
            cond = self.encode_for(list(prompts), g, metadata)
        x = self.initial_noise(noise_seeds if noise_seeds is not None else seeds).float()
        gens = sample_generators(seeds, "cpu", salt=1)
        mask = self.stochastic_mask(T, scfg, window_start) if stochastic else torch.zeros(T, dtype=torch.bool)
        k0 = self.check_expert_steps(mask)  # model.base_from: the base denoises steps k0.. (T: never)
        states = [x.cpu()]
        log_probs = torch.full((x.shape[0], T), float("nan"))
        means = [] if store_means else None
        with contextlib.ExitStack() as experts:
            for i in range(T):
                if i == k0:
                    model = experts.enter_context(self.reference())
                out = self.predict(model, x, sch.timesteps[i].to(self.device), cond, g)
                noise = per_sample_randn(x.shape[1:], gens, "cpu").to(self.device) if mask[i] else None
                st = self.kernel_step(out, x, i, sch, scfg, bool(mask[i]), noise=noise)
                if st.log_prob is not None:
                    log_probs[:, i] = st.log_prob.cpu()
                if means is not None:
                    means.append(st.mean.cpu())
                x = st.prev_sample
                states.append(x.cpu())
        n = x.shape[0]
        if train_steps is None:
            train_steps = torch.nonzero(~torch.isnan(log_probs[0])).flatten().expand(n, -1)
        return Rollout(
            prompts=list(prompts),
            seeds=list(seeds),
            group_ids=group_ids if group_ids is not None else torch.arange(n),
            cond=cond if own_cond else index_cond(cond, torch.arange(n)),
            states=torch.stack(states, 1),
            log_probs=log_probs,
            means=torch.stack(means, 1) if means is not None else None,
            train_steps=train_steps,
            schedule=sch,
            guidance_scale=g,
            samples=self.decode(x) if decode else None,
            metadata=[dict(m) for m in metadata] if metadata is not None else [],
        )

    def step_log_prob(self, model, ro: Rollout, step_idx: torch.Tensor, scfg: SamplerConfig, detach_uncond=False):
        """Recompute log π_model(x_{j+1} | x_j) for sample n at step ``step_idx[n]`` → (log_prob, mean, std)."""
        n = len(ro)
        ar = torch.arange(n)
        x = ro.states[ar, step_idx].to(self.device)
        x_next = ro.states[ar, step_idx + 1].to(self.device)
        sch = ro.schedule
        uniq = torch.unique(step_idx)
        if len(uniq) == 1:  # the common case: one step for the whole micro-batch
            i = int(uniq[0])
            out = self.predict(model, x, sch.timesteps[i].to(self.device), ro.cond, ro.guidance_scale, detach_uncond)
            st = self.kernel_step(out, x, i, sch, scfg, True, prev_sample=x_next)
            return st.log_prob, st.mean, st.std
        t = sch.timesteps[step_idx].to(self.device)
        out = self.predict(model, x, t, ro.cond, ro.guidance_scale, detach_uncond)
        lps, mus, stds = [], [], []
        for k in range(n):  # kernels take scalar σ per call; a per-sample loop over cheap arithmetic
            i = int(step_idx[k])
            st = self.kernel_step(out[k : k + 1], x[k : k + 1], i, sch, scfg, True, prev_sample=x_next[k : k + 1])
            lps.append(st.log_prob)
            mus.append(st.mean)
            stds.append(st.std)
        return torch.cat(lps), torch.cat(mus), torch.cat(stds)
