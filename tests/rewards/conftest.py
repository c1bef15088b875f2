"""Tiny models for the reward tests, built from configs and saved locally (nothing is downloaded)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.1, 0.9)}


def color_images(names, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in names:
        base = torch.tensor(COLORS[n]).view(3, 1, 1).expand(3, size, size)
        out.append((base + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(out)


def caption(name):
    return f"a photo of a {name} square"


def train_contrastive(image_fn, text_fn, params, logit_scale, steps=60, lr=3e-3, seed=0):
    """Briefly train a two-tower model so that matching colour captions score higher (CLIP loss)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    names = list(COLORS)
    caps = [caption(n) for n in names]
    target = torch.arange(len(names))
    for step in range(steps):
        ie = torch.nn.functional.normalize(image_fn(color_images(names, seed=step)), dim=-1)
        te = torch.nn.functional.normalize(text_fn(caps), dim=-1)
        logits = logit_scale().exp() * ie @ te.T
        loss = torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def trainable(model):
    """Parameters to train: all but the temperature and the (large, random, already distinct) token embeddings."""
    skip = ("logit_scale", "token_embedding", "word_embeddings")
    return [p for n, p in model.named_parameters() if not any(k in n for k in skip)]


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
