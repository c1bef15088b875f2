"""Feature encoders: tiny Dinov2Model / ClapModel saved with save_pretrained and loaded by path."""

import pytest
import torch

from genalign.errors import ConfigError, GenalignError
from genalign.rewards.clip import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from genalign.rewards.encoders import CallableEncoder, ClapEncoder, Dinov2Encoder, build_encoder

CLAP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "low", "high", "tone", "noise", "quiet", "loud"]


def test_dinov2_encoder_by_path(tiny_dinov2):
    from transformers import Dinov2Model

    enc = build_encoder("dinov2", {"model": tiny_dinov2})
    x = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    f = enc(x)
    assert f.shape == (3, 32) and torch.isfinite(f).all()
    model = Dinov2Model.from_pretrained(tiny_dinov2).eval()
    pre = ImagePreprocess(size=36, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with torch.no_grad():
        assert torch.allclose(f, model(pixel_values=pre(x)).pooler_output, atol=1e-5)
        mean_tok = model(pixel_values=pre(x)).last_hidden_state[:, 1:].mean(1)
    assert torch.allclose(Dinov2Encoder(tiny_dinov2, pool="mean")(x), mean_tok, atol=1e-5)
    assert not torch.allclose(f[0], f[1])
    with pytest.raises(ConfigError, match="valid choices: cls, mean"):
        Dinov2Encoder(tiny_dinov2, pool="max")
    with pytest.raises(GenalignError, match="not cross-modal"):
        enc.encode_text(["a"])


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    from transformers import BertTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    d = tmp_path_factory.mktemp("clap")
    (d / "vocab.txt").write_text("\n".join(CLAP_VOCAB) + "\n")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(CLAP_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=2, patch_stride=2, hidden_size=32,
                          patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2], enable_fusion=False,
                          intermediate_size=37, projection_dim=16),
        projection_dim=16)
    ClapModel(cfg).save_pretrained(str(d))
    ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=80, max_length_s=1, fft_window_size=256,
                         truncation="rand_trunc", frequency_min=0, frequency_max=4000).save_pretrained(str(d))
    return str(d)


def test_clap_encoder_audio_and_text(tiny_clap):
    from transformers import ClapFeatureExtractor, ClapModel

    t = torch.arange(4000) / 8000.0
    wav = torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * t), 0.3 * torch.sin(2 * torch.pi * 1500 * t)])
    stereo = wav[:, None].repeat(1, 2, 1)  # (2, 2, 4000): mixed down to mono
    enc = build_encoder("clap", {"model": tiny_clap, "sample_rate": 8000})
    f = enc(stereo)
    assert f.shape == (2, 16) and torch.isfinite(f).all() and not torch.allclose(f[0], f[1])
    model = ClapModel.from_pretrained(tiny_clap).eval()
    fe = ClapFeatureExtractor.from_pretrained(tiny_clap)
    feats = fe(list(wav.numpy()), sampling_rate=8000, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_audio_features(input_features=feats["input_features"], is_longer=feats["is_longer"])
    assert torch.allclose(f, getattr(ref, "pooler_output", ref), atol=1e-5)
    txt = enc.encode_text(["a low tone", "a loud noise"])
    assert txt.shape == (2, 16)
    # audio given at 16 kHz is resampled to the extractor's 8 kHz: close to the 8 kHz encoding of the same tones
    t16 = torch.arange(8000) / 16000.0
    wav16 = torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * t16), 0.3 * torch.sin(2 * torch.pi * 1500 * t16)])
    f16 = ClapEncoder(tiny_clap, sample_rate=16000)(wav16[:, None])
    assert torch.nn.functional.cosine_similarity(f16, f).min() > 0.99


def test_callable_and_unknown_encoders():
    fn = lambda x: x.mean(dim=(2, 3))  # noqa: E731
    enc = build_encoder(fn)
    assert isinstance(enc, CallableEncoder)
    assert enc(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ConfigError, match="unknown encoder 'nope'; valid choices: .*clap.*clip.*dinov2"):
        build_encoder("nope")
    bad = build_encoder(lambda x: x.sum())
    with pytest.raises(ValueError, match="expected"):
        bad(torch.ones(2, 3, 4, 4))
