"""Tiny random-weight diffusers pipelines of each supported family, built from configs (as diffusers' own
tests do) and saved with ``save_pretrained`` so that tests load them through the same code path a hub id
takes. Tokenizers are built offline (CLIP BPE from open_clip's merges file).
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
