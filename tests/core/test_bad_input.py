"""A corpus of malformed configs and CLI calls: each gives a one-line error naming the problem, exit status 2,
no traceback, and nothing written over."""

import os

import pytest

from genalign.cli import main

from .helpers import run_cli, tiny_config, write_config


def _check(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("genalign: error: "), err
    assert "Traceback" not in err[0]
    assert needle in err[0], err[0]
    return err[0]


@pytest.fixture
def good(tiny_sd3, tmp_path):
    return tiny_config(tiny_sd3, str(tmp_path / "out"))


CASES = [
    # (name, mutate(cfg) -> cfg or a raw text, overrides, expected fragment)
    ("unknown top-level key", lambda c: {**c, "trainn": {}}, [], "unknown key 'trainn'"),
    ("unknown nested key", lambda c: {**c, "train": {**c["train"], "lr": 1}}, [], "unknown key 'train.lr'"),
    ("wrong type", lambda c: {**c, "train": {**c["train"], "iterations": "ten"}}, [], "'train.iterations' must be an integer"),
    ("bool as string", lambda c: {**c, "run": {**c["run"], "resume": "yes"}}, [], "'run.resume' must be true or false"),
    ("unknown algorithm", lambda c: {**c, "algorithm": {"name": "grpoo"}}, [], "unknown algorithm 'grpoo'; valid choices"),
    ("unknown algorithm arg", lambda c: {**c, "algorithm": {"name": "grpo", "betta": 1}}, [], "unknown key 'algorithm.betta'"),
    ("unknown reward", lambda c: {**c, "rewards": ["clipscore"]}, [], "unknown reward 'clipscore'; valid choices"),
    ("no rewards", lambda c: {**c, "rewards": []}, [], "'rewards' is empty"),
    ("bad dotted reward", lambda c: {**c, "rewards": ["nosuchpkg.mod:R"]}, [], "cannot import reward"),
    ("unknown family", lambda c: {**c, "model": {**c["model"], "family": "sd4"}}, [], "unknown model family 'sd4'"),
    ("kernel/family mismatch", lambda c: {**c, "sampler": {**c["sampler"], "kernel": "ddim"}}, [], "'sampler.kernel' is 'ddim'"),
    ("bad enum", lambda c: {**c, "train": {**c["train"], "mixed_precision": "fp8"}}, [], "'train.mixed_precision' is 'fp8'"),
    ("negative lr override", lambda c: c, ["train.learning_rate=-1"], "'train.learning_rate' is -1.0; allowed: a number > 0"),
    ("override without =", lambda c: c, ["train.learning_rate"], "unexpected argument"),
    ("override bad index", lambda c: c, ["rewards.7.weight=2"], "not a valid list index"),
    ("missing prompts file", lambda c: {**c, "data": {**c["data"], "prompts": "/no/such/prompts.txt"}}, [], "does not exist"),
    ("zero group size", lambda c: {**c, "data": {**c["data"], "group_size": 0}}, [], "'data.group_size' must be > 0"),
]


@pytest.mark.parametrize("name,mutate,overrides,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_configs(capsys, good, tmp_path, name, mutate, overrides, needle):
    path = write_config(tmp_path / "cfg.yaml", mutate(dict(good)))
    _check(capsys, ["train", path, *overrides], needle)
    assert not os.path.exists(good["run"]["output_dir"])  # failed before anything was written


def test_bad_files(capsys, tmp_path, good):
    _check(capsys, ["train", str(tmp_path / "missing.yaml")], "does not exist")
    _check(capsys, ["train", str(tmp_path)], "is a directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iterations: [1,\n")
    _check(capsys, ["train", str(bad)], "not valid YAML at line")
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    _check(capsys, ["train", str(lst)], "must contain a mapping")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _check(capsys, ["train", str(binary)], "config file")


def test_missing_model_and_existing_run_are_not_touched(capsys, tmp_path, good):
    cfg = dict(good)
    cfg["model"] = {**cfg["model"], "path": str(tmp_path / "no_such_model")}
    _check(capsys, ["train", write_config(tmp_path / "a.yaml", cfg)], "does not exist")
    # a non-empty run directory is never written over without resume/overwrite
    out = tmp_path / "existing"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    cfg = dict(good)
    cfg["run"] = {**cfg["run"], "output_dir": str(out)}
    _check(capsys, ["train", write_config(tmp_path / "b.yaml", cfg)], "is not empty")
    assert (out / "metrics.jsonl").read_text() == "precious\n"
    _check(capsys, ["train", str(tmp_path / "b.yaml"), "run.resume=true"], "no complete checkpoint")
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_bad_cli_calls(capsys, tmp_path, tiny_sd3):
    _check(capsys, ["frobnicate"], "invalid choice")
    _check(capsys, ["export", str(tmp_path / "nockpt"), "--out", str(tmp_path / "x")], "does not exist")
    notck = tmp_path / "notck"
    notck.mkdir()
    _check(capsys, ["export", str(notck), "--out", str(tmp_path / "x")], "not a genalign checkpoint")
    _check(capsys, ["sample", "--model", tiny_sd3, "--out", str(tmp_path / "s")], "give --prompt")
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--base-from", "0.5", "--out", str(tmp_path / "s")],
           "--base-from with a full --model needs the base pipeline: pass --base-model PATH")
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--base-from", "1", "--out", str(tmp_path / "s")],
           "--base-from: 1.0 is out of range; expected a number in (0, 1)")
    bad = tmp_path / "bad_experts"
    bad.mkdir()
    (bad / "experts.json").write_text("{not json")
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--lora", str(bad), "--out", str(tmp_path / "s")],
           "experts.json' is unreadable or not valid JSON")
    _check(capsys, ["sample", "--model", str(tmp_path), "--prompt", "a", "--out", str(tmp_path / "s")],
           "cannot tell the model family")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--lora", str(corrupt), "--height", "16",
                    "--width", "16", "--out", str(tmp_path / "s")], "cannot load LoRA")


def test_real_process_exit_code_and_single_line(tmp_path):
    r = run_cli(["train", str(tmp_path / "nope.yaml")])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"genalign: error: config file '{tmp_path / 'nope.yaml'}' does not exist"]


def test_sample_defaults_to_the_pipelines_size_and_rejects_oversize(capsys, tmp_path, tiny_sd3):
    from genalign.cli import main
    from genalign.config import ModelConfig
    from genalign.models.base import native_size
    from genalign.registry import MODELS

    gen = MODELS.get("sd3").load(ModelConfig(family="sd3", path=tiny_sd3, height=0, width=0))
    h, w = native_size(gen.pipe, "transformer")
    assert (gen.cfg.height, gen.cfg.width) == (h, w) and h > 0
    assert main(["sample", "--model", tiny_sd3, "--prompt", "a", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "s" / "0000_seed0.png").size == (w, h)
    limit = gen.pipe.transformer.config.pos_embed_max_size * gen.pipe.transformer.config.patch_size * gen.pipe.vae_scale_factor
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--height", str(2 * limit), "--width",
                    str(2 * limit), "--out", str(tmp_path / "t")], f"at most {limit}x{limit} pixels")


def test_sample_reward_with_arguments(capsys, tmp_path, tiny_sd3):
    import json

    from genalign.cli import main

    spec = "{name: centroid_similarity, encoder: 'tests.algorithms.trainer_utils:mean_rgb', reference: [a, b]}"
    # a text reference needs a cross-modal encoder: the error comes from the reward, naming it
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--steps", "2", "--reward", spec,
                    "--out", str(tmp_path / "s")], "text")
    spec = "{name: vendi, encoder: 'tests.algorithms.trainer_utils:mean_rgb', per_prompt: true}"
    assert main(["sample", "--model", tiny_sd3, "--prompt", "a", "--seeds", "0", "1", "2", "--steps", "2",
                 "--reward", spec, "--reward", "tests.core.rewards_for_tests:MeanBrightness",
                 "--out", str(tmp_path / "t")]) == 0
    recs = [json.loads(line) for line in open(tmp_path / "t" / "samples.jsonl")]
    assert len(recs) == 3 and set(recs[0]["rewards"]) == {"vendi", "MeanBrightness"}
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--reward", "{encoder: x}",
                    "--out", str(tmp_path / "u")], "needs a 'name' key")
    _check(capsys, ["sample", "--model", tiny_sd3, "--prompt", "a", "--reward", "{name: [}",
                    "--out", str(tmp_path / "u")], "not a valid YAML mapping")
