"""Media writers (image grid, WAV, spectrograms, HTML), the one evaluation path, the run report and the
reward/model modality check."""

import html
import json
import math
import os
import wave
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from genalign import media
from genalign.errors import ConfigError, GenalignError
from genalign.media import LABEL_WIDTH, PAD, write_media

LONG = "a handwritten digit seven drawn very carefully with thick black ink on squared paper, slightly tilted"


def _dark(region: np.ndarray) -> int:
    return int((region.min(axis=-1) < 128).sum())


def test_image_grid_has_padding_labels_and_upscaled_cells(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    prompts = [LONG] * 3 + ["b"] * 3
    seeds = [5, 6, 7] * 2
    out = write_media(x, "image", str(tmp_path), "iter_000004", prompts, seeds, rows=2, cols=3)
    assert out["grid"] == str(tmp_path / "iter_000004.png")
    assert [os.path.basename(f) for f in out["files"]] == [f"{k:04d}_seed{s}.png" for k, s in enumerate(seeds)]
    one = np.asarray(Image.open(out["files"][4]))  # per-sample PNG: native size, 8-bit values of sample 4
    assert one.shape == (32, 32, 3)
    assert np.abs(one / 255.0 - x[4].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    grid = np.asarray(Image.open(out["grid"]).convert("RGB"))
    cell = 128  # 32 px upscaled 4x (nearest neighbour) so the toy world's digits are visible
    head = 15 + PAD
    assert grid.shape == (head + PAD + 2 * (cell + PAD), LABEL_WIDTH + PAD + 3 * (cell + PAD), 3)
    assert grid.shape[1] > 3 * cell and grid.shape[0] > 2 * cell
    x0, y0 = LABEL_WIDTH + PAD, head + PAD
    # cell (row 1, col 2) is sample 5 upscaled: every 4x4 block is one source pixel
    c = grid[y0 + cell + PAD : y0 + 2 * cell + PAD, x0 + 2 * (cell + PAD) : x0 + 2 * (cell + PAD) + cell]
    src = np.asarray(Image.open(out["files"][5]))
    assert np.array_equal(c, src.repeat(4, 0).repeat(4, 1))
    # padding between cells stays white; the prompt column and the seed header hold text
    assert (grid[y0 : y0 + cell, x0 + cell : x0 + cell + PAD] == 255).all()
    assert (grid[y0 + cell : y0 + cell + PAD, x0 : x0 + cell] == 255).all()
    assert _dark(grid[y0 : y0 + cell, :LABEL_WIDTH]) > 50  # row 0: the wrapped long prompt
    assert _dark(grid[y0 + cell + PAD : y0 + 2 * cell + PAD, :LABEL_WIDTH]) > 0  # row 1: "b"
    for col in range(3):
        assert _dark(grid[:head, x0 + col * (cell + PAD) : x0 + col * (cell + PAD) + cell]) > 10  # "seed N"
    assert _dark(grid[:head, :LABEL_WIDTH]) == 0  # no header over the prompt column


def test_prompt_wrapping_truncates_with_an_ellipsis():
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = media._font(12)
    lines = media.wrap_text(draw, LONG, font, 100, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(media._text_width(draw, ln, font) <= 100 for ln in lines)
    assert media.wrap_text(draw, "short", font, 100, max_lines=3) == ["short"]
    assert " ".join(media.wrap_text(draw, LONG, font, 100, max_lines=50)) == LONG  # nothing lost when it fits


def _tones(freqs, sr=16000, seconds=0.25, channels=1):
    t = torch.arange(int(sr * seconds)) / sr
    return torch.stack([torch.sin(2 * math.pi * f * t).mul(0.8).expand(channels, -1) for f in freqs])


def test_wav_round_trip_within_one_step_of_16_bit(tmp_path):
    x = _tones([440, 660, 880, 990], channels=2)
    x[0, 1, :10] = torch.tensor([1.5, -1.5, 1.0, -1.0, 0.0, 1e-5, -1e-5, 0.5, -0.5, 0.25])  # clipped beyond ±1
    out = write_media(x, "audio", str(tmp_path), "tones", ["a", "a", "b", "b"], [0, 1, 0, 1], 2, 2, sample_rate=16000)
    for k, path in enumerate(out["files"]):
        with wave.open(path, "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 16000, 4000)
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2).T / 32767.0
        assert np.abs(raw - x[k].clamp(-1, 1).numpy()).max() <= 1 / 32767 + 1e-7
    assert not [f for f in os.listdir(tmp_path / "tones") if f.startswith(".tmp-")]


def test_spectrogram_peaks_at_the_tone_and_the_grid_has_one_cell_per_sample(tmp_path):
    x = _tones([1000.0, 2000.0], sr=16000, seconds=0.5)
    spec = media.spectrogram(x[0], n_fft=512, hop=128)
    assert spec.shape == (257, 1 + 8000 // 128)
    assert int(spec[:, 10:-10].mean(1).argmax()) == 32  # 1000 Hz / (16000 Hz / 512) = bin 32
    assert float(spec.max()) == 0.0 and float(spec.min()) >= -80.0
    assert int(media.spectrogram(x[1], n_fft=512, hop=128)[:, 10:-10].mean(1).argmax()) == 64
    short = media.spectrogram(torch.zeros(1, 100) + 0.1)  # a clip shorter than n_fft: n_fft shrinks to 64
    assert short.shape[0] == 33
    y = _tones([500, 1000, 1500, 2000, 2500, 3000], seconds=0.2)
    out = write_media(y, "audio", str(tmp_path), "iter_000003", ["p"] * 3 + ["q"] * 3, [0, 1, 2] * 2, 2, 3,
                      sample_rate=16000)
    g = Image.open(out["grid"])
    assert g.size == (LABEL_WIDTH + PAD + 3 * (192 + PAD), 15 + PAD + PAD + 2 * (128 + PAD))


class _Audio(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "audio":
            assert "controls" in a
            self.srcs.append(a["src"])
        if tag == "img":
            self.srcs.append(("img", a["src"]))

    def handle_data(self, data):
        self.text.append(data)


def test_html_page_has_a_player_per_prompt_and_seed_with_scores(tmp_path):
    prompts = ["a <chord> & a note"] * 2 + ["a drum roll"] * 2
    scores = {"pitch": torch.tensor([0.1, 0.2, 0.3, float("nan")]), "fad": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    out = write_media(_tones([220, 330, 440, 550]), "audio", str(tmp_path), "iter_000007", prompts, [3, 9, 3, 9],
                      2, 2, scores=scores, sample_rate=16000)
    page = open(out["html"], encoding="utf-8").read()
    p = _Audio()
    p.feed(page)
    audio = [s for s in p.srcs if isinstance(s, str)]
    assert audio == ["0000_seed3.wav", "0001_seed9.wav", "0002_seed3.wav", "0003_seed9.wav"]
    here = os.path.dirname(out["html"])
    assert all(os.path.exists(os.path.join(here, s)) for s in audio)  # relative paths that resolve
    img = [s[1] for s in p.srcs if isinstance(s, tuple)]
    assert img == ["../iter_000007.png"] and os.path.exists(os.path.join(here, img[0]))
    text = " ".join(p.text)
    assert "a <chord> & a note" in text and "a drum roll" in text and html.escape(prompts[0]) in page
    assert text.count("seed 3") >= 2 and text.count("seed 9") >= 2
    assert "pitch: 0.3000" in text and "fad: 4.0000" in text and "pitch: nan" in text


def test_bad_media_input_is_one_line(tmp_path):
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(GenalignError, match="valid choices: image, audio"):
        write_media(x, "video", str(tmp_path), "t", ["a"] * 4, [0] * 4, 2, 2)
    with pytest.raises(GenalignError, match="do not fill a 3x2 grid"):
        write_media(x, "image", str(tmp_path), "t", ["a"] * 4, [0] * 4, 3, 2)
    with pytest.raises(GenalignError, match="sample_rate"):
        write_media(torch.zeros(4, 1, 100), "audio", str(tmp_path), "t", ["a"] * 4, [0] * 4, 2, 2)
    with pytest.raises(GenalignError, match=r"\(N, C, L\)"):
        write_media(x, "audio", str(tmp_path), "t", ["a"] * 4, [0] * 4, 2, 2, sample_rate=8000)


def test_a_failed_write_keeps_the_old_grid_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    x = torch.rand(4, 3, 8, 8)
    write_media(x, "image", str(tmp_path), "grid", ["a"] * 4, [0] * 4, 2, 2, per_sample=False)
    old = (tmp_path / "grid.png").read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr("genalign.io.os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_media(torch.zeros(4, 3, 8, 8), "image", str(tmp_path), "grid", ["a"] * 4, [0] * 4, 2, 2, per_sample=False)
    assert (tmp_path / "grid.png").read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["grid", "grid.png"]


# ---------------------------------------------------------------------------------------------- evaluation path
class _FakeGen:
    """rollout(...).samples: a constant image per item, value = (seed + 10 * len(prompt)) / 100."""

    modality = "image"

    def __init__(self):
        self.calls = []

    def rollout(self, prompts, seeds, scfg, num_steps=None, guidance_scale=None, stochastic=True, model=None):
        self.calls.append((len(prompts), stochastic, num_steps, guidance_scale, model))
        v = torch.tensor([(s + 10 * len(p)) / 100 for p, s in zip(prompts, seeds)])

        class R:
            samples = v.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()

        return R()

    def output_spec(self):
        return media.OutputSpec("image", height=4, width=4)


class _Rw:
    def __init__(self, name, fn, weight=1.0):
        self.name, self.fn, self.weight = name, fn, weight

    def __call__(self, samples, prompts, metadata=None):
        return self.fn(samples)


def test_shards_generated_apart_reassemble_to_the_single_process_batch():
    from genalign.evaluation import eval_items, generate, order_by_items

    items = eval_items(["ab", "abc"], [0, 1, 2])
    assert items == [("ab", 0), ("ab", 1), ("ab", 2), ("abc", 0), ("abc", 1), ("abc", 2)]
    gen = _FakeGen()
    full = generate(gen, [p for p, _ in items], [s for _, s in items], None, num_steps=3, batch_size=4)
    assert [c[:4] for c in gen.calls] == [(4, False, 3, None), (2, False, 3, None)]  # deterministic sampler
    parts = []
    for rank in range(2):  # what a 2-process trainer does: shard, generate, gather
        mine = items[rank::2]
        parts.append((mine, generate(gen, [p for p, _ in mine], [s for _, s in mine], None, batch_size=2)))
    assert torch.equal(order_by_items(parts, items), full)
    assert torch.allclose(full[:, 0, 0, 0], torch.tensor([0.2, 0.21, 0.22, 0.3, 0.31, 0.32]))


def test_scores_summary_and_records(tmp_path):
    from genalign.evaluation import score_samples, summarize, write_evaluation

    x = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    a = _Rw("r", lambda s: s.mean((1, 2, 3)))
    b = _Rw("r", lambda s: torch.tensor([1.0, float("nan"), 3.0, float("nan")]))
    scores = score_samples([a, b], x, ["p"] * 4)
    assert list(scores) == ["r", "r_2"]
    s = summarize(scores, [1.0, 2.0])
    # weighted sum over the rewards that apply: [0.1 + 2, 0.2, 0.3 + 6, 0.4] -> mean 9.0 / 4
    assert s["reward_mean"] == pytest.approx(9.0 / 4)
    assert s["r"] == pytest.approx(0.25) and s["r_2"] == pytest.approx(2.0)
    assert summarize({}) == {}
    out = write_evaluation(str(tmp_path), "iter_000010", x, ["p", "p", "q", "q"], [0, 1, 0, 1], 2, 2,
                           {"r": scores["r"], "bad": torch.full((4,), float("nan"))}, "image", iteration=10)
    recs = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert len(recs) == 4 and recs[2]["prompt"] == "q" and recs[2]["seed"] == 0 and recs[2]["iteration"] == 10
    assert recs[3]["file"] == os.path.join("iter_000010", "0003_seed1.png") and recs[3]["grid"] == "iter_000010.png"
    assert all(os.path.exists(tmp_path / r["file"]) for r in recs)
    assert recs[1]["rewards"]["r"] == pytest.approx(0.2)
    ev = [json.loads(line) for line in open(tmp_path / "evals.jsonl")]
    assert ev == [{"tag": "iter_000010", "iteration": 10, "num_samples": 4, "reward_mean": pytest.approx(0.25),
                   "r": pytest.approx(0.25), "bad": None}]
    assert out["summary"]["r"] == pytest.approx(0.25)


def test_genalign_eval_writes_metrics_grid_and_records(tiny_sd3, tmp_path, capsys):
    from genalign.cli import main

    from .helpers import tiny_config, write_config

    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"), data__eval_prompts=["a red cube", "a blue ball"],
                      data__eval_seeds=[0, 1, 2], sampler__eval_num_steps=2)
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["eval", path, "--out", str(tmp_path / "ev" / "metrics.json")]) == 0
    m = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert m["num_samples"] == 6 and set(m["MeanBrightness"]) == {"mean", "std"}
    assert m["reward_mean"] == pytest.approx(m["MeanBrightness"]["mean"])
    grid = Image.open(tmp_path / "ev" / "samples" / "grid.png")
    assert grid.size == (LABEL_WIDTH + PAD + 3 * (128 + PAD), 15 + 2 * PAD + 2 * (128 + PAD))  # 16 px x8
    assert Image.open(tmp_path / "ev" / "samples" / "0005_seed2.png").size == (16, 16)
    recs = [json.loads(line) for line in open(tmp_path / "ev" / "samples" / "samples.jsonl")]
    want = [(p, s) for p in ["a red cube", "a blue ball"] for s in [0, 1, 2]]
    assert [(r["prompt"], r["seed"]) for r in recs] == want
    # a second evaluation into the same place is refused in one line, and nothing is written over ...
    before = open(tmp_path / "ev" / "metrics.json").read()
    capsys.readouterr()
    assert main(["eval", path, "--out", str(tmp_path / "ev" / "metrics.json")]) != 0
    err = capsys.readouterr().err.strip()
    assert "already holds an evaluation" in err and len(err.splitlines()) == 1
    assert open(tmp_path / "ev" / "metrics.json").read() == before
    # ... unless told to: the samples are replaced (not appended to)
    assert main(["eval", path, "--out", str(tmp_path / "ev" / "metrics.json"), "--overwrite"]) == 0
    recs = [json.loads(line) for line in open(tmp_path / "ev" / "samples" / "samples.jsonl")]
    assert [(r["prompt"], r["seed"]) for r in recs] == want


# ---------------------------------------------------------------------------------------------------- report
def _grid_png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (300, 200), color).save(path)


def test_report_from_metrics_and_two_grids(tmp_path, capsys):
    from genalign.cli import main
    from genalign.report import _panels, read_curves, write_report

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, 7):
            row = {"step": s, "reward_mean": s / 6, "reward/ink": 0.5, "reward/digit": s / 7, "loss": 1 / s,
                   "kl": 0.01 * s, "seconds": 1.0, "note": "text"}
            if s == 3:
                row["eval/reward_mean"], row["eval/digit"] = 0.4, 0.3
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 7, "reward_mea')  # a line cut by a crash
    (run / "samples").mkdir()
    with open(run / "samples" / "evals.jsonl", "w") as f:
        for it, v in ((0, 0.1), (3, 0.99), (6, 0.7)):
            f.write(json.dumps({"tag": f"iter_{it:06d}", "iteration": it, "num_samples": 4, "reward_mean": v,
                                "digit": v}) + "\n")
    _grid_png(run / "samples" / "iter_000000.png", "red")
    _grid_png(run / "samples" / "iter_000003.png", "green")
    _grid_png(run / "samples" / "iter_000006.png", "blue")
    series = read_curves(str(run))
    assert series["eval/reward_mean"] == [(0.0, 0.1), (3.0, 0.4), (6.0, 0.7)]  # metrics.jsonl wins at step 3
    assert [t for t, _ in _panels(series)] == ["training reward", "evaluation reward", "loss", "KL to the reference"]
    assert _panels(series)[0][1] == ["reward_mean", "reward/digit", "reward/ink"]
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"genalign: wrote {run / 'report.png'}"
    im = np.asarray(Image.open(run / "report.png").convert("RGB")).astype(int)
    h = im.shape[0]
    bottom = im[h // 2 :]
    is_red = (bottom[..., 0] > 200) & (bottom[..., 1] < 60) & (bottom[..., 2] < 60)
    is_blue = (bottom[..., 2] > 200) & (bottom[..., 0] < 60) & (bottom[..., 1] < 60)
    is_green = (bottom[..., 1] > 100) & (bottom[..., 0] < 60) & (bottom[..., 2] < 60)
    assert is_red.sum() > 5000 and is_blue.sum() > 5000  # the first and the last grid ...
    assert is_green.sum() == 0  # ... and not the middle one
    assert np.where(is_red)[1].mean() < np.where(is_blue)[1].mean()  # first on the left
    assert write_report(str(run)) == str(run / "report.png")


def test_report_with_loss_only_and_a_single_grid(tmp_path):
    from genalign.report import _panels, read_curves, write_report

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "kl": 0.0}) + "\n"
                                               for s in range(1, 4)))
    _grid_png(run / "samples" / "iter_000003.png", "red")
    assert _panels(read_curves(str(run))) == [("loss", ["loss"])]  # an all-zero kl is not worth a panel
    out = write_report(str(run), str(tmp_path / "x.png"))
    assert Image.open(out).size[0] > 300
    (run / "samples" / "iter_000003.png").unlink()
    assert Image.open(write_report(str(run))).size[0] > 0  # curves only


def test_report_errors_are_one_line(tmp_path, capsys):
    from genalign.cli import main

    for d, needle in ((tmp_path / "missing", "does not exist"), (tmp_path, "is it a genalign run directory")):
        assert main(["report", str(d)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("genalign: error: ") and needle in err[0], err
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["report", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------------- modality
class AudioFamily:
    """Stands in for an audio model family: validation reads class attributes only, never loads it."""

    family, kind, modality = "audio_test", "flow", "audio"


def test_a_reward_for_another_modality_is_refused_in_one_line(tiny_sd3, tmp_path):
    from genalign.config import build_config

    from .helpers import tiny_config

    audio = "tests.core.test_media:AudioFamily"
    with pytest.raises(ConfigError) as e:
        build_config(tiny_config(tiny_sd3, str(tmp_path), model__family=audio))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"reward 'tests.core.rewards_for_tests:MeanBrightness' (rewards.0) scores image, but model family "
                   f"'{audio}' generates audio; choose a reward for audio")
    remote_audio = [{"name": "remote", "modality": "audio"}]
    build_config(tiny_config(tiny_sd3, str(tmp_path), model__family=audio, rewards=remote_audio))
    with pytest.raises(ConfigError, match="reward 'remote' .* scores audio, but model family 'sd3' generates image"):
        build_config(tiny_config(tiny_sd3, str(tmp_path), rewards=remote_audio))
    with pytest.raises(ConfigError, match="reward 'fd' .* scores audio"):  # the clap encoder embeds audio
        build_config(tiny_config(tiny_sd3, str(tmp_path),
                                 rewards=[{"name": "fd", "encoder": "clap", "reference": "x"}]))
    # an encoder that does not say what it embeds ('any') and the image default (clip) pass on an image model
    build_config(tiny_config(tiny_sd3, str(tmp_path), rewards=[
        {"name": "vendi", "encoder": "tests.algorithms.trainer_utils:mean_rgb"}, {"name": "fd", "reference": "x"}]))


def test_reward_modalities_are_declared():
    from genalign.registry import REWARDS

    for name in REWARDS.names():
        cls = REWARDS.get(name)
        assert cls.declared_modality({}) in ("image", "audio", "any"), name
    assert REWARDS.get("remote").declared_modality({"modality": "audio"}) == "audio"
    assert REWARDS.get("fd").declared_modality({"encoder": "clap"}) == "audio"
    assert REWARDS.get("fd").declared_modality({}) == "image"  # clip by default
    assert REWARDS.get("fd").declared_modality({"encoder": "no_such_encoder"}) == "any"  # its build reports it


def test_output_spec_of_an_image_generator(tiny_sd3):
    from genalign.config import ModelConfig
    from genalign.registry import MODELS

    gen = MODELS.get("sd3").load(ModelConfig(family="sd3", path=tiny_sd3, height=16, width=24))
    assert gen.output_spec() == media.OutputSpec("image", height=16, width=24)
    with pytest.raises(GenalignError, match="unknown modality 'video'"):
        media.OutputSpec("video")
