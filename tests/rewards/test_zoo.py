"""hpsv2 (tiny open_clip), image_reward (tiny transformers BLIP), ocr (injected engine)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from genalign.errors import CheckpointError, ConfigError
from genalign.rewards.base import build_reward
from genalign.rewards.clip import ImagePreprocess
from genalign.rewards.zoo import edit_distance, quoted_text
from reward_fixtures import COLORS, caption, color_images, train_contrastive, trainable

NAMES = list(COLORS)


# ---------------------------------------------------------------------------------------------- hpsv2

@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("hps")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "arch.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    tok = open_clip.SimpleTokenizer(context_length=77)
    pre = ImagePreprocess(size=32, crop=32)
    train_contrastive(lambda x: model.encode_image(pre(x)), lambda c: model.encode_text(tok(c)),
                      trainable(model), lambda: model.logit_scale)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1}, str(d / "hps.pt"))  # HPS layout
    save_file(sd, str(d / "hps.safetensors"))
    return d


@pytest.mark.parametrize("ckpt", ["hps.pt", "hps.safetensors"])
def test_hpsv2_prefers_matching_caption_and_is_differentiable(tiny_hps, ckpt):
    r = build_reward("hpsv2", {"checkpoint": str(tiny_hps / ckpt), "arch": str(tiny_hps / "arch.json")})
    imgs = color_images(NAMES, seed=99).requires_grad_(True)
    m = torch.stack([r(imgs, [caption(n)] * 3) for n in NAMES], dim=1)
    assert m.shape == (3, 3) and (m.abs() <= 1 + 1e-5).all()
    for i in range(3):
        assert m[i, i] == m[i].max(), m
    m.trace().backward()
    assert imgs.grad.abs().sum() > 0


def test_hpsv2_errors(tiny_hps, tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        build_reward("hpsv2", {"checkpoint": str(tiny_hps / "hps.pt"), "arch": "ViT-Nope"})(torch.rand(1, 3, 32, 32), ["x"])
    with pytest.raises(CheckpointError, match="not found"):
        build_reward("hpsv2", {"checkpoint": str(tmp_path / "x.pt"), "arch": str(tiny_hps / "arch.json")})(
            torch.rand(1, 3, 32, 32), ["x"])
    small = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "other.json").write_text(json.dumps(small))
    with pytest.raises(CheckpointError, match="does not fit"):
        build_reward("hpsv2", {"checkpoint": str(tiny_hps / "hps.pt"), "arch": str(tmp_path / "other.json")})(
            torch.rand(1, 3, 32, 32), ["x"])


# ---------------------------------------------------------------------------------------------- image_reward

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "a", "photo", "of", "red", "green", "blue",
         "square"]


@pytest.fixture(scope="module")
def tiny_image_reward(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    d = tmp_path_factory.mktemp("imagereward")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(VOCAB), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40, pad_token_id=0,
                         bos_token_id=5, sep_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(cfg)
    head = torch.nn.Sequential(torch.nn.Linear(32, 12), torch.nn.Dropout(0.0), torch.nn.Linear(12, 8),
                               torch.nn.Dropout(0.0), torch.nn.Linear(8, 6), torch.nn.Dropout(0.0),
                               torch.nn.Linear(6, 4), torch.nn.Linear(4, 1))
    pre = ImagePreprocess(size=32, crop=32)

    def raw(imgs, caps):  # ImageReward's forward, re-stated for training the tiny model
        emb = model.vision_model(pixel_values=pre(imgs)).last_hidden_state
        t = tok(caps, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
        out = model.text_encoder(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                                 encoder_hidden_states=emb,
                                 encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long))
        return head(out.last_hidden_state[:, 0]).squeeze(-1)

    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    target = torch.arange(3)
    for step in range(200):  # listwise: each image's own caption beats the other colours' captions
        imgs = color_images(NAMES, seed=step)
        caps = [caption(n) for n in NAMES for _ in range(3)]  # one batch of all 9 (caption, image) pairs
        logits = raw(imgs.repeat(3, 1, 1, 1), caps).view(3, 3).T  # (image, caption)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    BlipImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(str(d))
    save_file({f"mlp.layers.{k}": v.contiguous() for k, v in head.state_dict().items()}, str(d / "mlp.safetensors"))
    return d, raw


def test_image_reward_loads_by_path_and_ranks_matching_caption(tiny_image_reward):
    d, raw = tiny_image_reward
    r = build_reward("image_reward", {"model": str(d), "max_length": 12})
    imgs = color_images(NAMES, seed=4321).requires_grad_(True)
    m = torch.stack([r(imgs, [caption(n)] * 3) for n in NAMES], dim=1)
    assert m.shape == (3, 3) and torch.isfinite(m).all()
    for i in range(3):
        assert m[i, i] == m[i].max(), m
    with torch.no_grad():  # the normalisation of the released model
        expect = (raw(imgs.detach(), [caption("red")] * 3) - 0.16717362830052426) / 1.0333394966054072
    assert torch.allclose(m[:, 0].detach(), expect, atol=1e-4)
    m.trace().backward()
    assert imgs.grad.abs().sum() > 0


def test_image_reward_needs_model():
    with pytest.raises(ConfigError, match="needs model"):
        build_reward("image_reward")(torch.rand(1, 3, 32, 32), ["x"])


# ---------------------------------------------------------------------------------------------- ocr

def test_quoted_text_and_edit_distance():
    assert quoted_text('a sign that says "Hello World" on a wall') == "Hello World"
    assert quoted_text('“open” and "now"') == "open now"
    assert quoted_text("no quotes here") is None
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0


def test_ocr_reward_with_injected_engine():
    from genalign.rewards.zoo import OcrReward

    recognised = iter(["HELLO world", "helo world", "totally different text", "ignored"])
    seen = []

    def engine(img):
        seen.append(img.shape)
        return next(recognised)

    r = OcrReward(engine=engine)
    x = torch.rand(4, 3, 16, 24)
    prompts = ['a sign "hello world"', 'a sign "hello world"', 'a sign "hello world"', "a sign with no quoted text"]
    s = r(x, prompts)
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(1 - 1 / 10)  # "heloworld" vs "helloworld": 1 edit, 10 chars
    assert s[2].item() == pytest.approx(0.0)  # distance clipped at the target length
    assert torch.isnan(s[3])
    assert seen == [(16, 24, 3)] * 3  # the engine sees uint8 HWC images, not called for the NaN sample
    assert torch.isnan(r(x[:1], ["nothing quoted"])).all()


def test_ocr_engine_by_dotted_path_and_unknown():
    r = build_reward("ocr", {"engine": "reward_fixtures:caption"})  # any importable callable: caption(img) -> str
    out = r(torch.rand(1, 3, 8, 8), ['"x"'])
    assert 0.0 <= out.item() <= 1.0
    with pytest.raises(ConfigError, match="unknown ocr engine"):
        build_reward("ocr", {"engine": "tesseractz"})(torch.rand(1, 3, 8, 8), ['"x"'])


def _to_blip_reference_names(key):
    """transformers BLIP vision names -> salesforce/BLIP reference-code names (the inverse, written out)."""
    import re

    table = [
        (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
        (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
        (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
        (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    ]
    for pat, rep in table:
        new = re.sub(pat, rep, key)
        if new != key:
            return new
    return key


def test_convert_image_reward_checkpoint_round_trip(tiny_image_reward, tmp_path):
    from safetensors.torch import load_file
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from genalign.rewards.zoo import convert_image_reward_checkpoint

    d, _ = tiny_image_reward
    hf = BlipForImageTextRetrieval.from_pretrained(str(d)).state_dict()
    orig = {"blip." + _to_blip_reference_names(k): v for k, v in hf.items()
            if not k.startswith(("vision_proj", "text_proj", "itm_head"))}
    assert any(k.startswith("blip.visual_encoder.blocks.0.attn.qkv") for k in orig)
    orig.update(load_file(str(d / "mlp.safetensors")))
    torch.save(orig, str(tmp_path / "ImageReward.pt"))
    out = convert_image_reward_checkpoint(str(tmp_path / "ImageReward.pt"), str(tmp_path / "conv"), str(d),
                                          config=BlipConfig.from_pretrained(str(d)))
    x = color_images(NAMES, seed=3)
    a = build_reward("image_reward", {"model": str(d), "max_length": 12})(x, [caption("red")] * 3)
    b = build_reward("image_reward", {"model": out, "max_length": 12})(x, [caption("red")] * 3)
    assert torch.allclose(a, b, atol=1e-5)
    torch.save({"something": torch.zeros(1)}, str(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match="not an ImageReward checkpoint"):
        convert_image_reward_checkpoint(str(tmp_path / "bad.pt"), str(tmp_path / "c2"), str(d))
