"""`genalign eval` forwarding target: eval_main loads a saved VLM by path and writes a JSON report."""

import json
import os

import pytest

from genalign.errors import GenalignError
from genalign.gui.cli import eval_main, main
from genalign.gui.screens import write_screenspot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSET = os.path.join(ROOT, "assets", "gui", "tiny_vlm")


def test_eval_main_on_tiny_vlm(tmp_path, capsys):
    data = tmp_path / "v2"
    write_screenspot(str(data), screens_per_platform=2, seed=7)
    out = tmp_path / "report.json"
    rc = eval_main(["--benchmark", "screenspot-v2", "--data", str(data), "--model", ASSET, "--out", str(out),
                    "--batch-size", "4", "--no-progress", "--device", "cpu"])
    assert rc == 0
    rep = json.load(open(out))
    assert rep["num_samples"] == 12 and len(rep["records"]) == 12
    assert set(rep["splits"]) <= {f"{p}-{t}" for p in ("mobile", "desktop", "web") for t in ("text", "icon")}
    hits = sum(r["hit"] for r in rep["records"])
    assert rep["micro_accuracy"] == pytest.approx(hits / 12)
    manifest = json.load(open(os.path.join(ASSET, "manifest.json")))
    assert (rep["min_pixels"], rep["max_pixels"]) == (manifest["min_pixels"], manifest["max_pixels"])
    # the shipped policy emits parseable boxes
    assert rep["wrong_format"] <= 2
    assert "micro (over samples)" in capsys.readouterr().out


def test_user_errors(tmp_path, capsys):
    with pytest.raises(GenalignError, match="does not exist"):
        eval_main(["--benchmark", "screenspot-pro", "--data", str(tmp_path / "x"), "--model", ASSET])
    write_screenspot(str(tmp_path / "d"), screens_per_platform=1, seed=0)
    with pytest.raises(GenalignError, match="cannot load the VLM"):
        eval_main(["--benchmark", "screenspot-v2", "--data", str(tmp_path / "d"), "--model", str(tmp_path / "none")])
    assert main(["eval", "--benchmark", "screenspot-v2", "--data", str(tmp_path / "x"), "--model", ASSET]) == 2
    assert "genalign: error:" in capsys.readouterr().err
    assert main(["screens", "--out", str(tmp_path / "s"), "--screens", "1"]) == 0
    assert os.path.exists(tmp_path / "s" / "screenspot_web_v2.json")
