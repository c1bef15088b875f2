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


def test_qwen25vl_loads_by_path_and_generates(tmp_path):
    """The same loading path serves Qwen2.5-VL: a tiny one built from a config, saved, loaded back, evaluated."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from genalign.gui.data import load_benchmark
    from genalign.gui.evaluate import VLMPredictor, evaluate, load_vlm

    src = AutoProcessor.from_pretrained(ASSET)
    tok = src.tokenizer
    proc = Qwen2_5_VLProcessor(image_processor=src.image_processor, tokenizer=tok,
                               video_processor=src.video_processor, chat_template=src.chat_template)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                      "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [4, 6, 6]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0], window_size=56),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    m, p = load_vlm(str(tmp_path / "m"))
    assert type(m).__name__ == "Qwen2_5_VLForConditionalGeneration"
    write_screenspot(str(tmp_path / "d"), screens_per_platform=1, seed=3)
    samples = load_benchmark("screenspot-v2", str(tmp_path / "d"))
    pred = VLMPredictor(m, p, device="cpu", max_new_tokens=4, max_pixels=20_000)
    assert pred.pixels[1] == 20_000
    rep = evaluate(samples, pred, batch_size=3, progress=False)
    assert rep["num_samples"] == 6 and all(isinstance(r["output"], str) for r in rep["records"])
