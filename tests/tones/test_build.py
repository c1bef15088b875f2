"""The asset builder end to end at toy scale (seconds): files, manifest, loaders, and seeded training."""

import json
import os

import torch

from genalign.tones import data as D
from genalign.tones.assets import load_reference
from genalign.tones.build import BuildConfig, build_assets
from genalign.tones.clap import TonesClap, train_clap
from genalign.tones.encoders import TonesEncoder


def test_small_build_writes_loadable_assets(tmp_path):
    cfg = BuildConfig(train_clips=200, steps=120, batch_size=32, real_clips=6, staccato_clips=4, eval_clips_per_caption=1)
    m = build_assets(str(tmp_path), cfg, log=lambda *a: None)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["build"]["steps"] == 120 and on_disk["retrieval"]["clips_per_set"] == 72
    assert set(m["files"]) == {"clap.safetensors", "real.safetensors", "exemplars/staccato.safetensors",
                               "prompts/train.txt", "prompts/eval.txt",
                               "prompts/train_any_articulation.txt", "prompts/eval_any_articulation.txt"}
    assert m["clap_loss"]["last_50"] < m["clap_loss"]["first_50"]  # mean loss of the first vs last 50 steps
    wav, labels, emb = load_reference(path=str(tmp_path / "real.safetensors"))
    enc = TonesEncoder(path=str(tmp_path / "clap.safetensors"))
    assert torch.allclose(enc(wav), emb, atol=1e-3)
    assert (tmp_path / "prompts" / "eval.txt").read_text().splitlines() == D.tone_prompts("eval")
    assert TonesClap.load(str(tmp_path / "clap.safetensors")).config == m["clap_config"]
    assert os.path.getsize(tmp_path / "real.safetensors") < 6 * D.CLIP_LEN * 2 + 10_000  # float16 waveforms


def test_training_is_seeded():
    wav, labels = D.make_dataset(64, "train", seed=1)
    feats = TonesClap().audio_features(wav)
    caps = [lab.caption for lab in labels]
    a = train_clap(feats, caps, steps=5, batch_size=16, seed=3)
    b = train_clap(feats, caps, steps=5, batch_size=16, seed=3)
    c = train_clap(feats, caps, steps=5, batch_size=16, seed=4)
    assert a["losses"] == b["losses"] and a["losses"] != c["losses"]
    for (k, v), w in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(v, w), k
