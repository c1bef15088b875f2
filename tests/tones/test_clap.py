"""The shipped toy CLAP and reference sets: load, match the manifest, retrieve held-out captions, and serve as the
``tones`` encoder of the existing distributional rewards (FAD-style FD, exemplars, cross-modal text exemplars)."""

import pytest
import torch

from genalign.errors import CheckpointError
from genalign.rewards.base import build_reward
from genalign.rewards.distributional import ExemplarSet
from genalign.rewards.encoders import ENCODERS, build_encoder
from genalign.tones import assets as A
from genalign.tones import data as D
from genalign.tones.clap import TonesClap, clip_loss, load_clap, retrieval_accuracy, tokenize


@pytest.fixture(scope="module")
def manifest():
    return A.load_manifest()


@pytest.fixture(scope="module")
def clap():
    return load_clap()


def test_tokenizer_separates_pitch_names_from_articles():
    assert tokenize("a C major chord, bright") == ["a", "pitch:C", "major", "chord", "bright"]
    assert tokenize("an A note") == ["an", "pitch:A", "note"]
    assert tokenize("a Db note")[1] == tokenize("a C# note")[1] == "pitch:C#"


def test_clip_loss_hand_value():
    # two clips, two captions, orthogonal unit embeddings, scale 1: each row is log-softmax([1, 0]) -> log(1 + e^-1)
    a = torch.eye(2)
    loss = clip_loss(a, a, torch.tensor([0, 1]), torch.tensor(0.0))
    assert float(loss) == pytest.approx(torch.log1p(torch.exp(torch.tensor(-1.0))).item(), abs=1e-6)
    # duplicate captions are both positives: identical rows give target 1/2 each -> loss log 2
    loss = clip_loss(torch.ones(2, 1), torch.ones(2, 1), torch.tensor([0, 0]), torch.tensor(0.0))
    assert float(loss) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_heldout_retrieval_matches_manifest(manifest, clap):
    # one fresh clip per held-out caption (the build measured 4 per caption) keeps the test fast
    labels = D.split_labels("eval")
    wav = D.make_clips(labels, 2000 + manifest["build"]["seed"])
    acc = retrieval_accuracy(clap, wav, labels, D.all_labels())
    measured = manifest["retrieval"]["heldout_clips_vs_all_captions"]
    assert acc["top1"] >= measured["top1"] - 0.05 and acc["top1"] > 100 * acc["chance"]
    for attr in ("root", "kind", "timbre", "articulation"):
        assert acc[attr] >= measured[attr] - 0.05


def test_assets_match_manifest_and_load(manifest):
    import hashlib

    for name, info in manifest["files"].items():
        with open(A.tones_asset(name), "rb") as f:
            data = f.read()
        assert len(data) == info["bytes"] and hashlib.sha256(data).hexdigest() == info["sha256"], name
        assert len(data) < 4_000_000
    wav, labels, emb = A.load_reference()
    assert wav.shape == (manifest["build"]["real_clips"], 1, D.CLIP_LEN) and len(labels) == wav.shape[0]
    assert emb.shape == (wav.shape[0], manifest["clap_config"]["dim"])
    # the stored waveforms are the generator's clips (float16) and the stored embeddings are the CLAP's
    assert torch.allclose(wav[:4], D.make_clips(labels[:4], 3000 + manifest["build"]["seed"]), atol=1e-3)
    assert torch.allclose(load_clap().embed_audio(wav[:4]), emb[:4], atol=1e-3)
    swav, slabels, _ = A.load_reference(A.STACCATO)
    assert {lab.articulation for lab in slabels} == {"staccato"}
    model = TonesClap.load(A.tones_asset(A.CLAP))
    assert sum(p.numel() for p in model.parameters()) == manifest["clap_params"]


def test_bad_files_raise_checkpoint_error(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        TonesClap.load(str(bad))
    with pytest.raises(CheckpointError, match="build_tones_assets"):
        A.tones_asset("nope.safetensors")


def test_resampled_input_embeds_like_native(clap):
    x = D.make_clips([D.ToneLabel(4, "minor chord", "hollow", "legato")], seed=2)
    from scipy.signal import resample_poly

    x16 = torch.from_numpy(resample_poly(x.double().numpy(), 2, 1, axis=-1)).float()
    assert float((clap.embed_audio(x16, 16000) * clap.embed_audio(x)).sum()) > 0.98


def test_tones_encoder_works_with_fd_reward():
    assert "tones" in ENCODERS.names()
    enc = build_encoder("tones")
    assert enc.modality == "audio" and enc.id.startswith("tones-clap:")
    fd = build_reward("fd", {"encoder": "tones", "reference": A.tones_asset(A.REAL)})
    assert fd.modality == "audio"
    good, _ = D.make_dataset(48, "all", seed=99)  # fresh clips of the real distribution
    collapsed = D.make_clips([D.ToneLabel(0, "note", "sine", "legato")] * 48, seed=99)
    assert fd.set_value(good) > fd.set_value(collapsed) + 0.1
    mixed = torch.cat([good[:6], collapsed[:6]])
    s = fd(mixed, [""] * 12)
    assert s.shape == (12,) and s[:6].mean() > s[6:].mean()  # real-like clips close the gap, duplicates don't


def test_staccato_exemplars_and_text_exemplars_rank_articulation():
    st = D.make_clips([D.ToneLabel(r, "major chord", "bright", "staccato") for r in range(6)], seed=4)
    lg = D.make_clips([D.ToneLabel(r, "major chord", "bright", "legato") for r in range(6)], seed=4)
    x, prompts = torch.cat([st, lg]), [""] * 12
    audio_ex = build_reward("centroid_similarity", {"encoder": "tones", "reference": A.tones_asset(A.STACCATO)})
    s = audio_ex(x, prompts)
    assert s[:6].min() > s[6:].max()
    texts = [D.make_caption(r, k, t, "staccato") for r in range(12) for k in D.KIND_NAMES for t in D.TIMBRES]
    text_ex = ExemplarSet("tones", texts)  # cross-modal: text exemplars embedded by the text tower
    emb = build_encoder("tones")(x)
    sim = emb @ text_ex.embeddings.mean(0)
    assert sim[:6].min() > sim[6:].max()


def test_tones_clap_score_reward(clap):
    x = D.make_clips([D.ToneLabel(0, "major chord", "bright", "staccato")] * 2, seed=0)
    s = build_reward("tones_clap_score")(x, ["a C major chord, bright, staccato", "a D minor chord, sine, legato"])
    assert s.shape == (2,) and s[0] > 0.5 and s[0] > s[1] + 0.3


def test_pitch_floor_sets_the_feature_floor_and_legacy_files_keep_theirs(tmp_path):
    import json
    import math

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    t = torch.arange(D.CLIP_LEN) / D.SAMPLE_RATE
    sine = torch.sin(2 * math.pi * 440.0 * t)[None]  # A4: every band an octave or more away holds ~0 of the power
    n_bands = len(torch.arange(48.0, 110.0 + 1e-9, 0.5))
    for floor in (1e-2, 1e-6):
        pitch = TonesClap({"pitch_floor": floor}).audio.features(sine)[0, :n_bands]
        assert float(pitch.min()) == pytest.approx(math.log(floor), abs=1e-3)  # log(≈0 + floor)
        assert float(pitch.max()) > math.log(0.3)  # the A4 bands carry the power
    path = str(tmp_path / "clap.safetensors")
    TonesClap({"pitch_floor": 1e-2}).save(path)
    assert TonesClap.load(path).config["pitch_floor"] == 1e-2
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    del cfg["pitch_floor"], cfg["env_floor_db"]  # a file written before the floors were configurable
    save_file(load_file(path), path, metadata={**meta, "config": json.dumps(cfg)})
    old = TonesClap.load(path)
    assert old.config["pitch_floor"] == 1e-6 and old.config["env_floor_db"] == -60.0
    assert load_clap().config["pitch_floor"] == A.load_manifest()["clap_config"]["pitch_floor"] == 1e-2
