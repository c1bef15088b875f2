"""The shipped toy assets load through the real diffusers / safetensors code paths and match the manifest."""

import os

import pytest
import torch
from diffusers import DiffusionPipeline

from genalign.errors import CheckpointError
from genalign.toy import assets as A
from genalign.toy import data as D
from genalign.toy.classifier import DigitClassifier, accuracy


@pytest.fixture(scope="module")
def manifest():
    return A.load_manifest()


def test_flow_pipeline_loads_and_runs():
    pipe = DiffusionPipeline.from_pretrained(A.asset_path(*A.FLOW_PIPELINE), text_encoder_3=None, tokenizer_3=None)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a handwritten digit seven", "a handwritten digit one"], num_inference_steps=2, guidance_scale=1.0,
               height=16, width=16, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    # the stock default (256 zero "T5" tokens) also runs
    out = pipe("a handwritten digit two", num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert out.shape == (1, 3, 16, 16)


def test_eps_pipeline_loads_and_runs():
    pipe = DiffusionPipeline.from_pretrained(A.asset_path(*A.EPS_PIPELINE))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a handwritten digit seven"] * 2, num_inference_steps=2, guidance_scale=4.0, height=16, width=16,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_loaders_and_sizes(manifest):
    flow = A.load_flow_pipeline()
    eps = A.load_eps_pipeline()
    for name, pipe in (("digits_flow", flow), ("digits_eps", eps)):
        for comp, n in manifest["models"][name]["params"].items():
            assert sum(p.numel() for p in getattr(pipe, comp).parameters()) == n
        assert os.path.exists(os.path.join(A.asset_path("toy", name), "model_index.json"))
    assert flow.vae.config.scaling_factor == eps.vae.config.scaling_factor


def test_classifier_accuracy_matches_manifest(manifest):
    clf = DigitClassifier.load(A.asset_path(*A.CLASSIFIER))
    x, y = D.load_split("heldout")
    acc = accuracy(clf, x, y)
    assert acc == pytest.approx(manifest["classifier"]["heldout_accuracy"], abs=1e-9)
    assert acc > 0.95


def test_prompt_files_match_code():
    from genalign.io import read_prompts

    assert read_prompts(A.asset_path("toy", "prompts", "train.txt")) == D.digit_prompts("train")
    assert read_prompts(A.asset_path("toy", "prompts", "eval.txt")) == D.digit_prompts("eval")


def test_base_correctness_reproduces_manifest_seed0(manifest):
    """Seed 0 of the manifest's base evaluation, re-sampled through the stock pipeline call."""
    from genalign.toy.build import evaluate_pipeline

    rec = manifest["recommended"]["flow"]
    ev = manifest["base_eval"]["flow"]
    clf = A.load_classifier()
    kw = {"max_sequence_length": rec["max_sequence_length"]}
    res = evaluate_pipeline(A.load_flow_pipeline(), clf, [ev["seeds"][0]], rec["num_inference_steps"],
                            rec["guidance_scale"], ev["images_per_prompt"], **kw)
    assert res["correctness_mean"] == pytest.approx(ev["correctness_per_seed"][0], abs=0.01)


def test_bases_are_imperfect_and_draw_every_digit(manifest):
    """Room for a reward (mean 0.5-0.75) and signal for every prompt (no digit the base never draws): a group of
    samples that all score 0 gives a group-relative method nothing to learn from."""
    for kind in ("flow", "eps"):
        ev = manifest["base_eval"][kind]
        assert 0.5 <= ev["correctness_mean"] <= 0.75, (kind, ev["correctness_mean"])
        assert len(ev["correctness_per_digit"]) == 10
        assert min(ev["correctness_per_digit"]) >= 0.15, (kind, ev["correctness_per_digit"])
        assert manifest["recommended"][kind]["guidance_scale"] == 1.0  # CFG-free sampling


def test_missing_assets_raise_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENALIGN_ASSETS", str(tmp_path))
    with pytest.raises(CheckpointError, match="build_toy_assets"):
        A.asset_path(*A.FLOW_PIPELINE)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        DigitClassifier.load(str(tmp_path / "bad"))


def test_flow_base_is_consistent_across_null_token_counts(manifest):
    """Trained for any number of zero "T5" tokens: the stock default (256) matches the recommended short one."""
    from genalign.toy.build import evaluate_pipeline

    rec = manifest["recommended"]["flow"]
    clf, pipe = A.load_classifier(), A.load_flow_pipeline()
    short = evaluate_pipeline(pipe, clf, [5], rec["num_inference_steps"], rec["guidance_scale"], 3,
                              max_sequence_length=rec["max_sequence_length"])["correctness_mean"]
    stock = evaluate_pipeline(pipe, clf, [5], rec["num_inference_steps"], rec["guidance_scale"], 3)["correctness_mean"]
    assert abs(short - stock) < 0.15
    assert 0.3 < short < 0.9  # imperfect but far above chance (0.1)
