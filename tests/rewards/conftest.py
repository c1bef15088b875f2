"""Tiny models for the reward tests, built from configs and saved locally (nothing is downloaded)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reward_fixtures import train_contrastive, trainable


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory):
    from genalign.utils.tokenizers import write_clip_tokenizer_files

    d = str(tmp_path_factory.mktemp("cliptok"))
    write_clip_tokenizer_files(d)
    return d


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, clip_tokenizer_dir):
    """A tiny transformers CLIPModel trained for a few seconds on coloured squares, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from genalign.rewards.clip import ImagePreprocess

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(cfg)
    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    pre = ImagePreprocess(size=32, crop=32)

    def image_fn(x):
        return model.visual_projection(model.vision_model(pixel_values=pre(x)).pooler_output)

    def text_fn(caps):
        t = tok(caps, padding=True, return_tensors="pt")
        return model.text_projection(model.text_model(**t).pooler_output)

    train_contrastive(image_fn, text_fn, trainable(model),
                      lambda: model.logit_scale)
    d = str(tmp_path_factory.mktemp("tinyclip"))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A tiny transformers Dinov2Model + image processor, saved with save_pretrained."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from genalign.rewards.clip import IMAGENET_MEAN, IMAGENET_STD

    d = str(tmp_path_factory.mktemp("dinov2"))
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             image_size=32, patch_size=8)).save_pretrained(d)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(d)
    return d
