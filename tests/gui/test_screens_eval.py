"""Synthetic ScreenSpot data and the evaluator: oracle = 100 %, shifted oracle = hand count, exact boxes."""

import hashlib
import json
import os

import pytest

from genalign.errors import GenalignError
from genalign.gui.coords import convert_coords, format_box, resized_size
from genalign.gui.data import load_benchmark
from genalign.gui.evaluate import evaluate, format_table
from genalign.gui.screens import COLORS, write_screenspot, write_screenspot_pro


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    write_screenspot(str(d), screens_per_platform=3, seed=0)
    return str(d)


@pytest.fixture(scope="module")
def pro_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pro")
    write_screenspot_pro(str(d), screens_per_app=2, seed=0)
    return str(d)


class Oracle:
    """Answers in call order from the known samples: ``fn(sample, index) -> output``."""

    def __init__(self, samples, fn, coord_frame="pixel", pixels=None):
        self.samples, self.fn, self.i = samples, fn, 0
        self.coord_frame, self.pixels = coord_frame, pixels

    def __call__(self, images, instructions):
        out = []
        for img, ins in zip(images, instructions):
            s = self.samples[self.i]
            assert ins == s.instruction and img.size == s.size
            out.append(self.fn(s, self.i))
            self.i += 1
        return out


def _digest(d):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            with open(os.path.join(root, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_formats_and_determinism(v2_dir, pro_dir, tmp_path):
    for p in ("mobile", "desktop", "web"):
        recs = json.load(open(os.path.join(v2_dir, f"screenspot_{p}_v2.json")))
        assert recs and set(recs[0]) == {"img_filename", "bbox", "instruction", "data_type", "data_source"}
        assert all(r["data_type"] in ("text", "icon") and len(r["bbox"]) == 4 for r in recs)
    files = sorted(os.listdir(os.path.join(pro_dir, "annotations")))
    assert len(files) == 6 and all(f.endswith(".json") for f in files)
    rec = json.load(open(os.path.join(pro_dir, "annotations", files[0])))[0]
    assert {"img_filename", "bbox", "img_size", "ui_type", "group", "platform", "application", "id",
            "instruction"} <= set(rec)
    x1, y1, x2, y2 = rec["bbox"]
    assert 0 <= x1 < x2 <= rec["img_size"][0] and 0 <= y1 < y2 <= rec["img_size"][1]
    write_screenspot(str(tmp_path / "a"), screens_per_platform=3, seed=0)
    assert _digest(str(tmp_path / "a")) == _digest(v2_dir)
    write_screenspot(str(tmp_path / "b"), screens_per_platform=3, seed=1)
    assert _digest(str(tmp_path / "b")) != _digest(v2_dir)


def test_boxes_are_exact(v2_dir):
    samples = load_benchmark("screenspot-v2", v2_dir)
    checked = 0
    for s in samples:
        color = COLORS[s.instruction.split()[1]]
        img = s.load_image()
        x1, y1, x2, y2 = (int(v) for v in s.bbox)
        cy = (y1 + y2 - 1) // 2
        assert img.getpixel((x1, cy)) == color and img.getpixel((x2 - 1, cy)) == color, s.instruction
        assert img.getpixel((x1 - 1, cy)) != color and img.getpixel((x2, cy)) != color, s.instruction
        checked += 1
    assert checked == len(samples) > 10


@pytest.mark.parametrize("bench", ["screenspot-v2", "screenspot-pro"])
def test_perfect_oracle_every_split(bench, v2_dir, pro_dir):
    samples = load_benchmark(bench, v2_dir if bench == "screenspot-v2" else pro_dir)
    rep = evaluate(samples, Oracle(samples, lambda s, i: s.bbox), batch_size=4, progress=False, benchmark=bench)
    assert rep["num_samples"] == len(samples) and rep["wrong_format"] == 0
    assert all(v["accuracy"] == 1.0 for v in rep["splits"].values())
    assert rep["micro_accuracy"] == rep["macro_accuracy"] == 1.0
    if bench == "screenspot-pro":
        assert {k.split("-")[0] for k in rep["splits"]} == {"Dev", "Creative", "CAD", "Scientific", "Office", "OS"}
    else:
        assert {k.split("-")[0] for k in rep["splits"]} == {"mobile", "desktop", "web"}


def test_text_oracle_in_model_frame(v2_dir):
    """A model answering in the resized frame (as text) is mapped back correctly: 100 %."""
    samples = load_benchmark("screenspot-v2", v2_dir)
    px = (3136, 31_360, 28)

    def answer(s, i):
        return "assistant\n" + format_box(convert_coords(s.bbox, "pixel", "resized", s.size,
                                                         resized_size(*s.size, *px)))

    rep = evaluate(samples, Oracle(samples, answer, "resized", px), batch_size=5, progress=False)
    assert rep["micro_accuracy"] == 1.0
    # the same answers read as original pixels miss often: the frames differ
    rep2 = evaluate(samples, Oracle(samples, answer, "pixel"), batch_size=5, progress=False)
    assert rep2["micro_accuracy"] < 1.0


def test_shifted_oracle_matches_hand_count(v2_dir):
    """Even samples shift the click by 0.4 w (inside), odd ones by 0.6 w (outside); every 5th is garbage."""
    samples = load_benchmark("screenspot-v2", v2_dir)

    def answer(s, i):
        if i % 5 == 4:
            return "I cannot find it"
        x1, y1, x2, y2 = s.bbox
        dx = (0.4 if i % 2 == 0 else 0.6) * (x2 - x1)
        return [(x1 + x2) / 2 + dx, (y1 + y2) / 2]  # a point

    rep = evaluate(samples, Oracle(samples, answer), batch_size=3, progress=False)
    expected = {}
    for i, s in enumerate(samples):
        e = expected.setdefault(s.split, [0, 0, 0])
        e[0] += 1
        e[1] += int(i % 5 != 4 and i % 2 == 0)
        e[2] += int(i % 5 == 4)
    for split, (n, hits, wf) in expected.items():
        assert rep["splits"][split]["n"] == n and rep["splits"][split]["hits"] == hits
        assert rep["splits"][split]["wrong_format"] == wf
    assert rep["micro_accuracy"] == pytest.approx(sum(e[1] for e in expected.values()) / len(samples))
    assert rep["macro_accuracy"] == pytest.approx(sum(e[1] / e[0] for e in expected.values()) / len(expected))
    assert rep["wrong_format"] == sum(e[2] for e in expected.values())


def test_hand_fixture_edges_macro_micro(tmp_path):
    """Five hand-written samples: edge hits count; macro and micro differ as computed by hand."""
    from PIL import Image

    os.makedirs(tmp_path / "screenspotv2_image")
    Image.new("RGB", (100, 50)).save(tmp_path / "screenspotv2_image" / "a.png")
    recs = [  # bbox [x, y, w, h]
        {"img_filename": "a.png", "bbox": [10, 10, 20, 10], "instruction": "t1", "data_type": "text"},
        {"img_filename": "a.png", "bbox": [10, 10, 20, 10], "instruction": "t2", "data_type": "text"},
        {"img_filename": "a.png", "bbox": [10, 10, 20, 10], "instruction": "t3", "data_type": "text"},
        {"img_filename": "a.png", "bbox": [50, 20, 10, 10], "instruction": "i1", "data_type": "icon"},
    ]
    json.dump(recs, open(tmp_path / "screenspot_mobile_v2.json", "w"))
    json.dump([{"img_filename": "a.png", "bbox": [0, 0, 5, 5], "instruction": "w1", "data_type": "text"}],
              open(tmp_path / "screenspot_web_v2.json", "w"))
    samples = load_benchmark("screenspot-v2", str(tmp_path))
    answers = {
        "t1": "[30,20]",            # exactly the bottom-right corner (30, 20): hit, edges included
        "t2": "[30.5,20]",          # just outside: miss
        "t3": "[0,0,10,10]",        # box centre (5, 5): miss
        "i1": "[50,20,60,30]",      # centre (55, 25): hit
        "w1": "no box",             # wrong format
    }
    rep = evaluate(samples, Oracle(samples, lambda s, i: answers[s.instruction]), batch_size=2, progress=False)
    assert rep["splits"]["mobile-text"]["hits"] == 1 and rep["splits"]["mobile-icon"]["hits"] == 1
    assert rep["splits"]["web-text"]["wrong_format"] == 1
    assert rep["micro_accuracy"] == pytest.approx(2 / 5)
    assert rep["macro_accuracy"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    table = format_table(rep)
    assert "macro (mean of splits)" in table and "micro (over samples)" in table


def test_loader_errors(tmp_path):
    with pytest.raises(GenalignError, match="valid choices"):
        load_benchmark("screenspot-v3", str(tmp_path))
    with pytest.raises(GenalignError, match="does not exist"):
        load_benchmark("screenspot", str(tmp_path / "nope"))
    with pytest.raises(GenalignError, match="no screenspot_"):
        load_benchmark("screenspot-v2", str(tmp_path))
    (tmp_path / "screenspot_mobile_v2.json").write_text("{broken")
    with pytest.raises(GenalignError, match="cannot read annotation"):
        load_benchmark("screenspot-v2", str(tmp_path))
    with pytest.raises(GenalignError, match="annotations"):
        load_benchmark("screenspot-pro", str(tmp_path))
