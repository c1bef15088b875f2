"""Tiny random-weight diffusers pipelines of each supported family, built from configs (as diffusers' own
tests do) and saved with ``save_pretrained`` so that tests load them through the same code path a hub id
takes. Tokenizers are built offline (CLIP BPE from open_clip's merges file; FLUX's T5 tokenizer is a small
Unigram model trained here with the ``tokenizers`` library).

    build_tiny_sd3(dir)   build_tiny_flux(dir)   build_tiny_sd15(dir[, prediction_type])   build_tiny_sdxl(dir)
    build_tiny_stable_audio(dir)   (text-to-audio: waveforms (N, 2, L))

Each writes a diffusers pipeline folder into ``dir`` (32×32-pixel samples; 1–2 layers, 8–32 channels) and
returns ``dir``.
"""

from __future__ import annotations

import os

import torch

from ..utils.tokenizers import build_clip_tokenizer


def _clip_text(hidden=32, proj=True, vocab=49408, max_pos=77, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden,
                         intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=vocab, max_position_embeddings=max_pos, projection_dim=hidden, hidden_act="gelu")
    return CLIPTextModelWithProjection(cfg) if proj else CLIPTextModel(cfg)


def _vae(latent_channels=4, seed=0, shift=None, blocks=(8,)):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    kw = dict(shift_factor=shift) if shift is not None else {}
    return AutoencoderKL(block_out_channels=list(blocks), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks), latent_channels=latent_channels,
                         norm_num_groups=min(8, blocks[0]), sample_size=32, scaling_factor=1.5, **kw)


def build_tiny_sd3(out_dir: str, seed: int = 0) -> str:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok_dir = os.path.join(out_dir, "_tok")
    tok = build_clip_tokenizer(tok_dir)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer, vae=_vae(4, seed, shift=0.1),
        text_encoder=_clip_text(32, True, seed=seed), tokenizer=tok,
        text_encoder_2=_clip_text(32, True, seed=seed + 1), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---------------------------------------------------------------------------------------------------------- T5
_T5_WORDS = (
    "a an the of on in with and photo picture painting drawing image cat dog horse bird astronaut robot car tree "
    "house red blue green yellow black white small large tiny big handwritten digit zero one two three four five "
    "six seven eight nine riding sitting running beach moon city forest night day bright dark"
).split()


def build_t5_tokenizer(out_dir: str, vocab_size: int = 160):
    """A small Unigram tokenizer (T5-style: Metaspace pre-tokenizer, ``</s>`` appended, ``<pad>`` id 0) trained
    offline with the ``tokenizers`` library on a fixed word list and wrapped in ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    corpus = []
    for i in range(len(_T5_WORDS)):  # deterministic pseudo-sentences over the word list
        corpus.append(" ".join(_T5_WORDS[(i * k) % len(_T5_WORDS)] for k in range(1, 8)))
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    t5 = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
                         model_max_length=512)
    os.makedirs(out_dir, exist_ok=True)
    t5.save_pretrained(out_dir)
    return T5TokenizerFast.from_pretrained(out_dir)


def _t5_encoder(vocab: int, d_model=32, seed=0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg)


def build_tiny_flux(out_dir: str, seed: int = 0, guidance_embeds: bool = True) -> str:
    """FLUX.1-dev-shaped pipeline: CLIP-L pooled + T5 sequence, packed 2×2 latents, embedded guidance,
    dynamic time shifting (the FLUX.1-dev scheduler config)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tok = build_clip_tokenizer(os.path.join(out_dir, "_tok"))
    tok2 = build_t5_tokenizer(os.path.join(out_dir, "_tok2"))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae(4, seed, shift=0.1, blocks=(8, 16)),
                        text_encoder=_clip_text(32, False, seed=seed), tokenizer=tok,
                        text_encoder_2=_t5_encoder(len(tok2), 32, seed=seed + 1), tokenizer_2=tok2,
                        transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---------------------------------------------------------------------------------------------------------- SD / SDXL
def _unet(cross_dim: int, seed=0, sdxl=False, prediction_type="epsilon"):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kw = {}
    if sdxl:  # pooled text embeds (text_encoder_2 projection) + 6 micro-conditioning time ids
        kw = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8, use_linear_projection=True)
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_dim,
                                attention_head_dim=(2, 4), norm_num_groups=8, **kw)


def _ddim(prediction_type="epsilon"):
    from diffusers import DDIMScheduler

    # the SD1.5 / SDXL scheduler configs (scaled-linear betas, leading spacing, offset 1, ᾱ_final = ᾱ_0)
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                         prediction_type=prediction_type)


def build_tiny_sd15(out_dir: str, seed: int = 0, prediction_type: str = "epsilon") -> str:
    """SD1.5-shaped ``StableDiffusionPipeline`` (no safety checker); ``prediction_type`` "v_prediction" = SD2-style."""
    from diffusers import StableDiffusionPipeline

    tok = build_clip_tokenizer(os.path.join(out_dir, "_tok"))
    pipe = StableDiffusionPipeline(vae=_vae(4, seed, blocks=(8, 16)), text_encoder=_clip_text(32, False, seed=seed),
                                   tokenizer=tok, unet=_unet(32, seed, prediction_type=prediction_type),
                                   scheduler=_ddim(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_sdxl(out_dir: str, seed: int = 0) -> str:
    """SDXL-shaped pipeline: CLIP-L hidden states ⊕ CLIP-G hidden states, pooled CLIP-G text_embeds + time ids."""
    from diffusers import StableDiffusionXLPipeline

    tok = build_clip_tokenizer(os.path.join(out_dir, "_tok"))
    pipe = StableDiffusionXLPipeline(vae=_vae(4, seed, blocks=(8, 16)), text_encoder=_clip_text(32, False, seed=seed),
                                     text_encoder_2=_clip_text(32, True, seed=seed + 1), tokenizer=tok,
                                     tokenizer_2=tok, unet=_unet(64, seed, sdxl=True), scheduler=_ddim(),
                                     add_watermarker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---------------------------------------------------------------------------------------------------------- Stable Audio
def build_tiny_stable_audio(out_dir: str, seed: int = 0) -> str:
    """Stable-Audio-Open-shaped ``StableAudioPipeline`` from the component configs of diffusers' own pipeline test
    (METHODS.md §14): ``StableAudioDiTModel`` (2 layers, 3 latent channels), ``AutoencoderOobleck`` (stereo,
    hop 2, ``sampling_rate`` 4), ``StableAudioProjectionModel``, a 1-layer ``T5EncoderModel`` with the offline
    Unigram T5 tokenizer, and the released checkpoint's scheduler, ``CosineDPMSolverMultistepScheduler``
    (v-prediction, exponential σ schedule; importable only with ``torchsde`` installed)."""
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    try:
        from diffusers import CosineDPMSolverMultistepScheduler

        scheduler = CosineDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                                      sigma_schedule="exponential")
    except ImportError as e:  # diffusers exposes a dummy class that raises when torchsde is missing
        from ..errors import GenalignError

        raise GenalignError(f"the Stable Audio scheduler needs torchsde: pip install torchsde ({e})") from None
    tok = build_t5_tokenizer(os.path.join(out_dir, "_tok"))
    torch.manual_seed(seed)
    transformer = StableAudioDiTModel(sample_size=4, in_channels=3, num_layers=2, attention_head_dim=4,
                                      num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4,
                                      time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4)
    torch.manual_seed(seed)
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[1, 2], decoder_channels=3,
                             decoder_input_channels=3, audio_channels=2, channel_multiples=[2, 4], sampling_rate=4)
    text_encoder = _t5_encoder(len(tok), 32, seed=seed)
    torch.manual_seed(seed)
    projection = StableAudioProjectionModel(text_encoder_dim=text_encoder.config.d_model, conditioning_dim=4,
                                            min_value=0, max_value=32)
    pipe = StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tok,
                               transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ---------------------------------------------------------------------------------------------------------- Stable Audio 3
def build_gemma_tokenizer(out_dir: str, max_length: int = 16):
    """A small character-level Gemma tokenizer (``GemmaTokenizer``: BPE with no merges over ``▁``, letters, digits
    and a little punctuation; ``<bos>`` prepended, ``<pad>`` id 0, right padding), built offline."""
    import string

    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = ["▁"] + list(string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,-'")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length, add_bos_token=True,
                         padding_side="right")
    os.makedirs(out_dir, exist_ok=True)
    tok.save_pretrained(out_dir)
    return GemmaTokenizer.from_pretrained(out_dir)


def build_tiny_stable_audio3(out_dir: str, seed: int = 0, stochastic_sampling: bool = False) -> str:
    """Stable-Audio-3-shaped ``StableAudio3Pipeline`` from the component sizes of diffusers' own pipeline test:
    ``StableAudio3DiTModel`` (2 blocks, 8 latent channels), ``AutoencoderSAME`` (stereo, downsampling 4,
    ``sampling_rate`` 16), a 2-layer ``T5GemmaEncoderModel`` (hidden 16) with the offline Gemma tokenizer (16
    tokens), ``StableAudio3DurationEmbedder`` and ``FlowMatchEulerDiscreteScheduler`` with model time σ
    (``num_train_timesteps`` 1: the DiT takes t in [0, 1]); ``stochastic_sampling`` True = the ping-pong sampler."""
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    dim = 16
    tok = build_gemma_tokenizer(os.path.join(out_dir, "_tok"))
    torch.manual_seed(seed)
    transformer = StableAudio3DiTModel(io_channels=8, patch_size=1, embed_dim=32, depth=2, num_heads=4,
                                       cond_token_dim=dim, global_cond_dim=dim, local_add_cond_dim=5,
                                       timestep_features_dim=16, ff_mult=2, num_memory_tokens=3,
                                       use_differential_attention=False)
    # the DiT's output convs start at zero (the released init): give them weight so the velocity is not x-free
    with torch.no_grad():
        for conv in (transformer.preprocess_conv, transformer.postprocess_conv):
            conv.weight.normal_(0, 0.3)
    torch.manual_seed(seed)
    vae = AutoencoderSAME(audio_channels=2, patch_size=2, encoder_channels=8, encoder_c_mults=(2,),
                          encoder_strides=(2,), encoder_transformer_depths=(1,), latent_dim=8,
                          use_differential_attention=False, dim_heads=4, ff_mult=2, sampling_rate=16)
    torch.manual_seed(seed)
    module = T5GemmaModuleConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                 max_position_embeddings=64, sliding_window=64,
                                 layer_types=["full_attention", "full_attention"])
    text_encoder = T5GemmaEncoderModel(T5GemmaConfig(encoder=module.to_dict(), decoder=module.to_dict(),
                                                     is_encoder_decoder=False))
    torch.manual_seed(seed)
    duration = StableAudio3DurationEmbedder(output_dim=dim, fourier_dim=16)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0,
                                                stochastic_sampling=stochastic_sampling)
    pipe = StableAudio3Pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, duration_embedder=duration,
                                transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
