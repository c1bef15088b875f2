"""Build the ``digits`` toy world's assets: classifier, two pretrained base pipelines, prompt lists, manifest.

``python scripts/build_toy_assets.py`` calls :func:`build_assets`. Everything is deterministic given the seed and
the thread count (``torch.use_deterministic_algorithms(True)``, a fixed number of intra-op threads, seeded
generators for every random draw); bitwise equality across machines also needs the same torch version.

What is built (see :class:`BuildConfig` for every number):

1. **classifier** — :class:`~genalign.toy.classifier.DigitClassifier` on the training split with augmentation.
2. **VAE** — one tiny ``AutoencoderKL`` with two blocks (8, 16 channels; ``vae_scale_factor`` = 2: 16×16 images
   ↔ 4×8×8 latents — the digits are 8×8 at source, so nothing is lost, and the denoisers run on 64 positions),
   trained briefly as an autoencoder (MSE + 1e-6·KL) on the training split. Its latent posterior means are
   whitened by ``scaling_factor`` = 1 / std; ``shift_factor`` = 0 (SD3 config) / None (SD config). The same
   weights go into both pipelines.
3. **text encoders** — tiny CLIP text models (1 layer, hidden 16) with random, *frozen* weights. A frozen random
   encoder still carries each word through its token embedding: SD3 reads the penultimate hidden state, which for
   a 1-layer CLIP is exactly the token + position embedding, and SD reads the final-layer-normed output. The
   tokenizers are the genuine CLIP BPE tokenizer (built offline) with ``model_max_length`` 16 (prompts are <= 10
   tokens). Freezing keeps the conditioning a fixed function (prompt embeddings are precomputed with the
   pipeline's own ``encode_prompt``), which is what a LoRA fine-tune later sees.
4. **flow pipeline** — ``StableDiffusion3Pipeline``: a tiny ``SD3Transformer2DModel`` trained with the
   rectified-flow objective (Liu et al. 2022; Esser et al. 2024, eq. 3 with x_t = (1-s) x0 + s e and target
   v = e - x0, s ~ U(0, 1)), ``FlowMatchEulerDiscreteScheduler(shift=1.0)`` — no timestep shift: the shift of
   SD3 compensates for high resolutions; a 4×16×16 latent needs none. With ``text_encoder_3=None`` the SD3
   pipeline appends ``max_sequence_length`` all-zero "T5" tokens (default 256) to the 2×16 CLIP tokens. Identical
   zero tokens act in attention as one token whose logit is raised by log(count), so training draws the count
   log-uniformly from [1, 256] per batch and simulates it exactly with one zero token and a +log k attention bias
   (:class:`_NullTokenBias`): the model is valid for the stock default and for the short
   ``max_sequence_length`` recommended for speed (manifest ``recommended.flow``). 2 joint blocks, 2×24 heads.
5. **ε pipeline** — ``StableDiffusionPipeline``: a tiny ``UNet2DConditionModel`` trained with the DDPM
   ε-objective (Ho et al. 2020, eq. 14) on SD's scaled-linear schedule, sampled with ``DDIMScheduler`` (η = 0);
   channels (16, 32), cross-attention at the 4×4 level and in the mid block.

Both denoisers train with classifier-free-guidance dropout (the empty prompt for ``cfg_dropout`` of the rows,
Ho & Salimans 2022). Pretraining is stopped early on purpose: the bases must be recognisable but imperfect so
that reward fine-tuning has something to improve. The rule (deterministic, recorded in the manifest with the
curve it saw): constant lr after warm-up; every ``stop_every`` steps sample the eval prompts with a seed not used
by the reported evaluation and stop once the mean digit-correctness is >= ``stop_at`` *and* every digit's is >=
``stop_min_digit``. The floor matters: a base stopped on the mean alone draws some digits (7, 8) almost never, and a
group-relative method gets no signal from a prompt whose every sample scores 0. The recommended sampler is CFG-free
(guidance 1): both bases follow their prompts without guidance, which halves every rollout's cost, and guidance
sharpens them into near-perfect digits with little room left for a reward (see the manifest's curves).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import data as D
from .classifier import DigitClassifier, accuracy, train_classifier

MAX_TOKENS = 16
LATENT_SIZE = D.IMAGE_SIZE // 2  # the VAE halves the resolution: 16x16 images <-> 4x8x8 latents


@dataclass
class BuildConfig:
    seed: int = 0
    threads: int = 1  # intra-op threads; part of bit-reproducibility (1 is also fastest on a shared 2-core box)
    classifier_steps: int = 400
    vae_steps: int = 400
    flow_steps: int = 3000  # the most; early stopping (below) usually ends sooner
    eps_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    # early stopping of the denoisers: every `stop_every` steps sample `stop_images` images per eval prompt with
    # seed `stop_seed` (recommended steps / CFG) and stop once mean digit-correctness >= `stop_at` and every digit's
    # >= `stop_min_digit` (stop_at 0 disables)
    stop_every: int = 100
    stop_at: float = 0.6
    stop_min_digit: float = 0.25
    stop_seed: int = 1000
    stop_images: int = 16
    cfg_dropout: float = 0.1
    text_hidden: int = 16
    flow_layers: int = 2
    max_null_tokens: int = 256
    # evaluation of the bases (recommended sampling settings)
    evaluate: bool = True
    eval_seeds: Sequence[int] = (0, 1, 2, 3)
    eval_images_per_prompt: int = 8
    flow_steps_sample: int = 10
    flow_guidance: float = 1.0  # CFG-free (see the module docstring)
    flow_max_sequence_length: int = 8
    eps_steps_sample: int = 10
    eps_guidance: float = 1.0


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _cosine_lr(opt, base_lr: float, step: int, total: int, warmup: int = 50) -> None:
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        lr = base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))
    for g in opt.param_groups:
        g["lr"] = lr


def _warmup_lr(opt, base_lr: float, step: int, warmup: int = 50) -> None:
    for g in opt.param_groups:
        g["lr"] = base_lr * min(1.0, (step + 1) / warmup)


class _NullTokenBias:
    """SD3 joint attention where the LAST context token stands for k identical all-zero "T5" tokens.

    k identical keys with identical values receive k times the softmax weight of one, i.e. one key whose logit is
    raised by log k. Zero tokens stay identical to each other through every layer (same input, same per-token
    operations, identical queries), so this is exact and lets training see any k at the cost of one token.
    Used only while pretraining; the saved model runs with diffusers' stock processor."""

    log_k: float = 0.0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b = hidden_states.shape[0]
        heads = attn.heads

        def split(x):
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        n_img = hidden_states.shape[1]
        cq = split(attn.add_q_proj(encoder_hidden_states))
        ck = split(attn.add_k_proj(encoder_hidden_states))
        cv = split(attn.add_v_proj(encoder_hidden_states))
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
        bias[-1] = self.log_k
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(q.shape[2], -1))
        out = out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
        h, c = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            c = attn.to_add_out(c)
        h = attn.to_out[1](attn.to_out[0](h))
        return h, c


def _tokenizer(tmp: str):
    from genalign.utils.tokenizers import build_clip_tokenizer

    return build_clip_tokenizer(os.path.join(tmp, "tokenizer"), max_length=MAX_TOKENS)


def _clip_config(hidden: int, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def _frozen(module):
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------------------------- VAE
def _vae(shift_factor: Optional[float], scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4, sample_size=D.IMAGE_SIZE, scaling_factor=scaling_factor, shift_factor=shift_factor,
        mid_block_add_attention=False, force_upcast=False,
    )


def train_vae(images: torch.Tensor, cfg: BuildConfig, log: Callable[[str], None]):
    torch.manual_seed(cfg.seed + 1)
    vae = _vae(0.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=2 * cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    vae.train()
    for step in range(cfg.vae_steps):
        _cosine_lr(opt, 2 * cfg.lr, step, cfg.vae_steps)
        x = images[torch.randint(0, images.shape[0], (cfg.batch_size,), generator=g)] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.5f}")
    vae.eval()
    with torch.no_grad():
        z = vae.encode(images * 2 - 1).latent_dist.mean
        rec = vae.decode(z).sample
        mse = F.mse_loss((rec + 1) / 2, images).item()
    std = float(z.std())
    scaling = 1.0 / std if std > 0 else 1.0
    vae.register_to_config(scaling_factor=scaling)
    return _frozen(vae), z * scaling, {"reconstruction_mse": mse, "scaling_factor": scaling,
                                       "latent_mean": float(z.mean())}


def _copy_vae(vae, shift_factor: Optional[float]):
    new = _vae(shift_factor, vae.config.scaling_factor)
    new.load_state_dict(vae.state_dict())
    return _frozen(new)


# ----------------------------------------------------------------------------------------------- data
def _batch(g: torch.Generator, latents: torch.Tensor, labels: torch.Tensor, inks: torch.Tensor, cfg: BuildConfig,
           prompt_index: Dict[str, int]):
    idx = torch.randint(0, latents.shape[0], (cfg.batch_size,), generator=g)
    prompts = D.training_prompts(labels[idx], inks[idx], g)
    drop = torch.rand(cfg.batch_size, generator=g) < cfg.cfg_dropout
    pid = torch.tensor([0 if d else prompt_index[p] for p, d in zip(prompts, drop.tolist())])
    return latents[idx], pid


# ----------------------------------------------------------------------------------------------- flow
def build_flow_pipeline(vae, latents, labels, inks, tmp: str, cfg: BuildConfig, log, callback=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(cfg.seed + 2)
    te1 = _frozen(CLIPTextModelWithProjection(_clip_config(cfg.text_hidden, True)))
    te2 = _frozen(CLIPTextModelWithProjection(_clip_config(cfg.text_hidden, True)))
    torch.manual_seed(cfg.seed + 3)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=1, in_channels=4, num_layers=cfg.flow_layers, attention_head_dim=24,
        num_attention_heads=2, joint_attention_dim=2 * cfg.text_hidden, caption_projection_dim=48,
        pooled_projection_dim=2 * cfg.text_hidden, out_channels=4, pos_embed_max_size=LATENT_SIZE,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_copy_vae(vae, 0.0),
        text_encoder=te1, tokenizer=_tokenizer(tmp), text_encoder_2=te2, tokenizer_2=_tokenizer(tmp),
        text_encoder_3=None, tokenizer_3=None,
    )
    prompts = [""] + D.digit_prompts("train")
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                               max_sequence_length=1)
    emb = emb[:, :MAX_TOKENS]  # the CLIP part; the zero "T5" tokens are appended per batch below
    index = {p: i for i, p in enumerate(prompts)}
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    null_bias = _NullTokenBias()
    default_processors = transformer.attn_processors
    transformer.set_attn_processor(null_bias)
    transformer.train()
    for step in range(cfg.flow_steps):
        _warmup_lr(opt, cfg.lr, step)
        x0, pid = _batch(g, latents, labels, inks, cfg, index)
        # k zero "T5" tokens, k log-uniform in [1, max_null_tokens], as ONE zero token with +log k attention bias
        null_bias.log_k = torch.rand((), generator=g).item() * math.log(cfg.max_null_tokens)
        ctx = torch.cat([emb[pid], emb.new_zeros(len(pid), 1, emb.shape[-1])], dim=1)
        noise = torch.randn(x0.shape, generator=g)
        s = torch.rand(len(pid), generator=g)
        xt = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        pred = transformer(hidden_states=xt, encoder_hidden_states=ctx, pooled_projections=pooled[pid],
                           timestep=s * 1000, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.flow_steps - 1:
            log(f"flow step {step} loss {loss.item():.4f}")
        if callback is not None and callback(step + 1, pipe, default_processors, null_bias):
            break
    transformer.set_attn_processor(dict(default_processors))
    _frozen(transformer)
    return pipe, step + 1


# ----------------------------------------------------------------------------------------------- eps
def build_eps_pipeline(vae, latents, labels, inks, tmp: str, cfg: BuildConfig, log, callback=None):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(cfg.seed + 5)
    te = _frozen(CLIPTextModel(_clip_config(cfg.text_hidden, False)))
    torch.manual_seed(cfg.seed + 6)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=4, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=_copy_vae(vae, None), text_encoder=te, tokenizer=_tokenizer(tmp), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    prompts = [""] + D.digit_prompts("train")
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    index = {p: i for i, p in enumerate(prompts)}
    alphas_cumprod = scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    unet.train()
    for step in range(cfg.eps_steps):
        _warmup_lr(opt, cfg.lr, step)
        x0, pid = _batch(g, latents, labels, inks, cfg, index)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(pid),), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=emb[pid], return_dict=False)[0]
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.eps_steps - 1:
            log(f"eps step {step} loss {loss.item():.4f}")
        if callback is not None and callback(step + 1, pipe, None, None):
            break
    _frozen(unet)
    return pipe, step + 1


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def sample_pipeline(pipe, prompts: List[str], seed: int, steps: int, guidance: float, **kwargs) -> torch.Tensor:
    """Images (N, 3, 16, 16) in [0, 1] from the stock pipeline call (its default deterministic sampler)."""
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=D.IMAGE_SIZE,
               width=D.IMAGE_SIZE, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs)
    return out.images.float().clamp(0, 1)


@torch.no_grad()
def evaluate_pipeline(pipe, classifier: DigitClassifier, seeds: Sequence[int], steps: int, guidance: float,
                      images_per_prompt: int = 8, **kwargs) -> Dict[str, Any]:
    """Digit-correctness (mean ± std over seeds) on the eval prompts, FD to the held-out digits, diversity."""
    from .metrics import diversity
    from .rewards import correctness_from_logits

    base = D.digit_prompts("eval")
    prompts = [p for p in base for _ in range(images_per_prompt)]
    per_seed, all_images, per_digit = [], [], []
    digits = [D.parse_digit(p) for p in prompts]
    for seed in seeds:
        images = sample_pipeline(pipe, prompts, seed, steps, guidance, **kwargs)
        c = correctness_from_logits(classifier(images), digits)
        per_seed.append(float(c.mean()))
        per_digit.append(c.view(len(base), images_per_prompt).mean(1))
        all_images.append(images)
    order = [D.parse_digit(p) for p in base]
    digit_means = torch.stack(per_digit).mean(0)
    images = torch.cat(all_images)
    t = torch.tensor(per_seed)
    return {
        "correctness_mean": float(t.mean()), "correctness_std": float(t.std()) if len(t) > 1 else 0.0,
        "correctness_per_seed": per_seed,
        "correctness_per_digit": [round(float(digit_means[order.index(d)]), 4) for d in sorted(order)],
        "fd_to_heldout": fd_to_real_with(images, classifier),
        "diversity": diversity(images, classifier), "seeds": list(seeds), "images_per_prompt": images_per_prompt,
        "num_inference_steps": steps, "guidance_scale": guidance, "prompts": "assets/toy/prompts/eval.txt",
        **({"pipeline_kwargs": kwargs} if kwargs else {}),
    }


@torch.no_grad()
def fd_to_real_with(images: torch.Tensor, classifier: DigitClassifier) -> float:
    from .metrics import feature_fd

    real, _ = D.load_split("heldout")
    return feature_fd(classifier.features(images), classifier.features(real))


# ----------------------------------------------------------------------------------------------- driver
def _stopper(asset: str, clf, cfg: BuildConfig, log, curve: List):
    """The early-stopping check (see the manifest's ``early_stopping.rule``); appends (step, correctness)."""

    def check(step: int, pipe, default_processors, training_processor) -> bool:
        if cfg.stop_at <= 0 or step % cfg.stop_every:
            return False
        net = pipe.transformer if asset == "flow" else pipe.unet
        if default_processors is not None:
            net.set_attn_processor(dict(default_processors))  # diffusers pops from the dict
        net.eval()
        if asset == "flow":
            res = evaluate_pipeline(pipe, clf, [cfg.stop_seed], cfg.flow_steps_sample, cfg.flow_guidance,
                                    cfg.stop_images, max_sequence_length=cfg.flow_max_sequence_length)
        else:
            res = evaluate_pipeline(pipe, clf, [cfg.stop_seed], cfg.eps_steps_sample, cfg.eps_guidance,
                                    cfg.stop_images)
        net.train()
        if training_processor is not None:
            net.set_attn_processor(training_processor)
        c, lo = res["correctness_mean"], min(res["correctness_per_digit"])
        curve.append([step, round(c, 4), round(lo, 4)])
        log(f"{asset} step {step}: stop-check correctness {c:.3f} (worst digit {lo:.3f})")
        return c >= cfg.stop_at and lo >= cfg.stop_min_digit

    return check


def build_assets(out_dir: str, cfg: Optional[BuildConfig] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Build everything into ``out_dir`` (``<out_dir>/digits_flow``, ``digits_eps``, ``classifier``, ``prompts``,
    ``manifest.json``), each written to a temporary folder and moved into place. Returns the manifest."""
    import diffusers
    import transformers

    from ..io import atomic_write_json

    cfg = cfg or BuildConfig()
    t_start = time.time()
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".toybuild-", dir=out_dir)
    try:
        images, labels = D.load_split("train")
        held_images, held_labels = D.load_split("heldout")
        inks = D.ink(images)
        timings = {}

        t0 = time.time()
        clf = train_classifier(images, labels, cfg.classifier_steps, cfg.seed)
        clf_acc = accuracy(clf, held_images, held_labels)
        clf_train_acc = accuracy(clf, images, labels)
        timings["classifier_s"] = time.time() - t0
        log(f"classifier held-out accuracy {clf_acc:.4f}")

        t0 = time.time()
        vae, latents, vae_info = train_vae(images, cfg, log)
        timings["vae_s"] = time.time() - t0

        curves: Dict[str, List] = {"flow": [], "eps": []}
        t0 = time.time()
        flow, flow_steps = build_flow_pipeline(vae, latents, labels, inks, tmp, cfg, log,
                                               _stopper("flow", clf, cfg, log, curves["flow"]))
        timings["flow_s"] = time.time() - t0
        t0 = time.time()
        eps, eps_steps = build_eps_pipeline(vae, latents, labels, inks, tmp, cfg, log,
                                            _stopper("eps", clf, cfg, log, curves["eps"]))
        timings["eps_s"] = time.time() - t0

        evals: Dict[str, Any] = {}
        if cfg.evaluate:
            t0 = time.time()
            evals["flow"] = evaluate_pipeline(flow, clf, cfg.eval_seeds, cfg.flow_steps_sample, cfg.flow_guidance,
                                              cfg.eval_images_per_prompt,
                                              max_sequence_length=cfg.flow_max_sequence_length)
            evals["eps"] = evaluate_pipeline(eps, clf, cfg.eval_seeds, cfg.eps_steps_sample, cfg.eps_guidance,
                                             cfg.eval_images_per_prompt)
            with torch.no_grad():
                evals["real_heldout_correctness"] = float(
                    torch.softmax(clf(held_images), -1).gather(1, held_labels[:, None]).mean())
                # reference: FD of as many real training digits as the evaluation sampled, to the held-out ones
                n_eval = len(cfg.eval_seeds) * cfg.eval_images_per_prompt * 10
                evals["real_train_fd_to_heldout"] = fd_to_real_with(images[:n_eval], clf)
            timings["eval_s"] = time.time() - t0
            for k in ("flow", "eps"):
                log(f"{k}: correctness {evals[k]['correctness_mean']:.3f} ± {evals[k]['correctness_std']:.3f}, "
                    f"FD {evals[k]['fd_to_heldout']:.3f}")

        # write: each folder built under tmp, then moved over the old one
        staged = {"classifier": os.path.join(tmp, "classifier"), "digits_flow": os.path.join(tmp, "digits_flow"),
                  "digits_eps": os.path.join(tmp, "digits_eps"), "prompts": os.path.join(tmp, "prompts")}
        clf.save(staged["classifier"])
        flow.save_pretrained(staged["digits_flow"], safe_serialization=True)
        eps.save_pretrained(staged["digits_eps"], safe_serialization=True)
        D.write_prompt_files(staged["prompts"])
        for name, src in staged.items():
            dst = os.path.join(out_dir, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)

        manifest = {
            "script": "scripts/build_toy_assets.py",
            "command": f"HF_HUB_OFFLINE=1 python scripts/build_toy_assets.py --seed {cfg.seed} --threads {cfg.threads}",
            "seed": cfg.seed,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
            "data": {
                "source": "sklearn.datasets.load_digits (1797 real 8x8 digits, shipped with scikit-learn)",
                "image": "16x16 bilinear upsample, white digit on black, 3 identical channels in [0, 1]",
                "split": f"torch.randperm(1797, seed={D.SPLIT_SEED}): first {D.N_HELDOUT} held-out, rest train",
                "n_train": int(images.shape[0]), "n_heldout": int(held_images.shape[0]),
                "ink_thresholds": {"thin_below": D.THIN_INK, "thick_above": D.THICK_INK},
            },
            "early_stopping": {
                "rule": ("denoisers train with a constant lr (50-step warm-up); every config.stop_every steps the "
                         "eval prompts are sampled (config.stop_images images each, generator seed "
                         "config.stop_seed, recommended steps/CFG) and training stops at the first check whose "
                         "mean digit-correctness >= config.stop_at and worst digit's >= config.stop_min_digit, "
                         "else after config.flow_steps / config.eps_steps; curve rows are [step, mean, worst digit]"),
                "flow_stopped_at_step": flow_steps, "eps_stopped_at_step": eps_steps,
                "curves": curves},
            "classifier": {"heldout_accuracy": clf_acc, "train_accuracy": clf_train_acc,
                           "params": _n_params(clf), "steps": cfg.classifier_steps},
            "vae": {**vae_info, "params": _n_params(vae), "steps": cfg.vae_steps},
            "models": {
                "digits_flow": {"params": {k: _n_params(getattr(flow, k)) for k in
                                           ("transformer", "vae", "text_encoder", "text_encoder_2")},
                                "bytes": _dir_bytes(os.path.join(out_dir, "digits_flow")),
                                "scheduler": "FlowMatchEulerDiscreteScheduler(shift=1.0)",
                                "text_encoders": "frozen random CLIP (1 layer, hidden 16), CLIP BPE tokenizer "
                                                 f"max_length {MAX_TOKENS}",
                                "load": "DiffusionPipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)"},
                "digits_eps": {"params": {k: _n_params(getattr(eps, k)) for k in ("unet", "vae", "text_encoder")},
                               "bytes": _dir_bytes(os.path.join(out_dir, "digits_eps")),
                               "scheduler": "DDIMScheduler (scaled_linear, epsilon, eta=0)",
                               "text_encoders": "frozen random CLIP (1 layer, hidden 16)"},
            },
            "recommended": {
                "flow": {"num_inference_steps": cfg.flow_steps_sample, "guidance_scale": cfg.flow_guidance,
                         "max_sequence_length": cfg.flow_max_sequence_length, "height": 16, "width": 16},
                "eps": {"num_inference_steps": cfg.eps_steps_sample, "guidance_scale": cfg.eps_guidance,
                        "height": 16, "width": 16},
            },
            "base_eval": evals,
            "build_time_s": {**timings, "total_s": time.time() - t_start},
            "threads": cfg.threads,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
        }
        atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
