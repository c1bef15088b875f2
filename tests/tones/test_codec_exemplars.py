"""scripts/bench/tones_codec_exemplars.py: the exemplars through the shipped pipeline's codec, in the exemplar file's
format, embedded by the shipped toy CLAP, and usable as a DRAGON reward's reference."""

import importlib.util
import os
import sys

import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXEMPLARS = os.path.join(REPO, "assets", "tones", "exemplars", "staccato.safetensors")


def test_round_tripped_exemplars_file(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("tones_codec_exemplars",
                                                  os.path.join(REPO, "scripts/bench/tones_codec_exemplars.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = str(tmp_path / "ex" / "staccato_codec.safetensors")
    monkeypatch.setattr(sys, "argv", ["tones_codec_exemplars.py", "--out", out])
    mod.main()
    assert "Fréchet distance to the real exemplars" in capsys.readouterr().out
    src, d = load_file(EXEMPLARS), load_file(out)
    assert sorted(d) == sorted(src) and torch.equal(d["label_index"], src["label_index"])
    assert d["waveforms"].shape == src["waveforms"].shape and d["embeddings"].shape == src["embeddings"].shape
    # the codec changes the clips, but keeps them (it is lossy, not a different clip)
    err = (d["waveforms"] - src["waveforms"]).pow(2).mean() / src["waveforms"].pow(2).mean()
    assert 1e-6 < float(err) < 0.5
    from genalign.tones.clap import load_clap
    with torch.no_grad():
        emb = load_clap().embed_audio(d["waveforms"]).float()
    assert torch.allclose(d["embeddings"], emb, atol=1e-5)
    from genalign.registry import REWARDS
    r = REWARDS.get("exemplar_loglik")(encoder="tones", reference=out, shrinkage=0.1)
    scores = r(d["waveforms"][:4], ["a C note, sine, staccato"] * 4)
    assert scores.shape == (4,) and bool(torch.isfinite(scores).all())
