"""A table of malformed inputs, tried as a new user would (CLI verbs run in-process through genalign.cli.main):
each must give exit status 2 (or 1), exactly one line on stderr, no traceback, and leave what was on disk before
exactly as it was. The test prints the counts per group.

Groups: YAML with repeated keys and override values that look like config files; out-of-range numbers given on the
command line (sample, eval, embed-exemplars, serve-reward); `sample --out` into a folder with earlier samples;
user rewards that raise, return the wrong thing, or are functions with the wrong signature.
"""

import collections
import os

import pytest
import yaml

from genalign.cli import main

from .helpers import tiny_config

R = "tests.core.rewards_for_tests:"


def _snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[p] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture
def ctx(tiny_sd3, tmp_path):
    c = {"model": tiny_sd3, "tmp": str(tmp_path), "precious": str(tmp_path / "precious")}
    os.makedirs(os.path.join(c["precious"], "samples"))
    for name, data in [("samples/0000_seed0.png", b"an earlier sample"), ("samples/samples.jsonl", b'{"prompt": "x"}\n'),
                       ("notes.txt", b"precious")]:
        with open(os.path.join(c["precious"], name), "wb") as f:
            f.write(data)
    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"))
    good = yaml.safe_dump(cfg, sort_keys=False)
    c["good"] = str(tmp_path / "good.yaml")
    with open(c["good"], "w") as f:
        f.write(good)

    def write(name, text):
        p = str(tmp_path / name)
        with open(p, "w") as f:
            f.write(text)
        return p

    c["dup_top"] = write("dup_top.yaml", good + "train:\n  seed: 3\n")
    c["dup_nested"] = write("dup_nested.yaml", "model:\n  family: sd3\n  height: 16\n  family: flux\n")
    c["dup_reward"] = write("dup_reward.yaml", "rewards:\n  - name: brightness\n    weight: 1\n    weight: 2\n")
    c["dup_flow"] = write("dup_flow.yaml", "train: {seed: 1, iterations: 2, seed: 2}\n")
    c["a_file"] = write("a_file", "not a folder")
    return c


def sample(c, *extra, out=None):
    return ["sample", "--model", c["model"], "--prompt", "a", "--seeds", "0", "--steps", "2",
            "--out", out or os.path.join(c["tmp"], "fresh"), *extra]


CASES = [
    # (group, name, argv(ctx), fragment expected in the one line)
    ("config", "repeated top-level section", lambda c: ["train", c["dup_top"]], "repeats the key 'train' at line"),
    ("config", "repeated nested key", lambda c: ["train", c["dup_nested"]], "repeats the key 'family' at line 4"),
    ("config", "repeated key in a reward entry", lambda c: ["train", c["dup_reward"]], "repeats the key 'weight' at line 4"),
    ("config", "repeated key in a flow mapping", lambda c: ["train", c["dup_flow"]], "repeats the key 'seed' at line 1"),
    ("config", "repeated key in an override", lambda c: ["train", c["good"], "train={seed: 1, seed: 2}"],
     "override 'train={seed: 1, seed: 2}' repeats the key 'seed'"),
    ("config", "override value ending in .yaml is an override",
     lambda c: ["train", c["good"], "data.prompts=/no/such/prompts.yaml"], "'/no/such/prompts.yaml' does not exist"),
    ("config", "override value ending in .yml is an override",
     lambda c: ["train", c["good"], "data.prompts=/no/such/p.yml"], "'/no/such/p.yml' does not exist"),
    ("config", "two config files", lambda c: ["train", c["good"], c["dup_flow"]], "unexpected argument"),
    ("sample args", "zero steps", lambda c: sample(c, "--steps", "0"), "--steps: 0 must be an integer > 0"),
    ("sample args", "negative steps", lambda c: sample(c, "--steps", "-3"), "--steps: -3 must be an integer > 0"),
    ("sample args", "steps not a number", lambda c: sample(c, "--steps", "many"), "'many' is not an integer"),
    ("sample args", "negative seed", lambda c: sample(c, "--seeds", "0", "-1"), "seed -1 is out of range"),
    ("sample args", "fractional seed", lambda c: sample(c, "--seeds", "1.5"), "'1.5' is not an integer"),
    ("sample args", "seed over 2**64-1", lambda c: sample(c, "--seeds", str(2**64)), "is out of range"),
    ("sample args", "negative height", lambda c: sample(c, "--height", "-16"), "--height: -16 must be an integer >= 0"),
    ("sample args", "negative width", lambda c: sample(c, "--width", "-1"), "--width: -1 must be an integer >= 0"),
    ("sample args", "negative guidance", lambda c: sample(c, "--guidance", "-2"), "--guidance: -2 must be a number >= 0"),
    ("sample args", "NaN guidance", lambda c: sample(c, "--guidance", "nan"), "finite"),
    ("sample --out", "folder with earlier samples", lambda c: sample(c, out=os.path.join(c["precious"], "samples")),
     "is not empty (2 entries)"),
    ("sample --out", "folder with user files", lambda c: sample(c, out=c["precious"]), "pass --overwrite"),
    ("sample --out", "--overwrite, then the model fails to load", lambda c: ["sample", "--model", c["tmp"], "--prompt",
     "a", "--overwrite", "--out", os.path.join(c["precious"], "samples")], "cannot tell the model family"),
    ("sample --out", "--overwrite, then a reward raises",
     lambda c: sample(c, "--overwrite", "--reward", R + "Raises", out=os.path.join(c["precious"], "samples")),
     "raised RuntimeError"),
    ("sample --out", "a file, not a folder", lambda c: sample(c, out=c["a_file"]), "is a file, not a folder"),
    ("eval args", "negative seed", lambda c: ["eval", c["good"], "--seeds", "-2"], "seed -2 is out of range"),
    ("embed-exemplars", "zero batch size", lambda c: ["embed-exemplars", "--encoder", "digits", "--reference",
                                                     c["tmp"], "--out", "e.safetensors", "--batch-size", "0"],
     "--batch-size: 0 must be an integer > 0"),
    ("embed-exemplars", "negative batch size", lambda c: ["embed-exemplars", "--encoder", "digits", "--reference",
                                                         c["tmp"], "--out", "e.safetensors", "--batch-size", "-4"],
     "--batch-size: -4 must be an integer > 0"),
    ("embed-exemplars", "zero image size", lambda c: ["embed-exemplars", "--encoder", "digits", "--reference",
                                                     c["tmp"], "--out", "e.safetensors", "--image-size", "0"],
     "--image-size: 0 must be an integer > 0"),
    ("serve-reward", "negative max-request-bytes", lambda c: ["serve-reward", "brightness", "--max-request-bytes", "-1"],
     "--max-request-bytes: -1 must be an integer > 0"),
    ("serve-reward", "zero max-request-bytes", lambda c: ["serve-reward", "brightness", "--max-request-bytes", "0"],
     "--max-request-bytes: 0 must be an integer > 0"),
    ("serve-reward", "negative request-timeout", lambda c: ["serve-reward", "brightness", "--request-timeout", "-5"],
     "--request-timeout: -5 must be a number > 0"),
    ("serve-reward", "zero request-timeout", lambda c: ["serve-reward", "brightness", "--request-timeout", "0"],
     "--request-timeout: 0 must be a number > 0"),
    ("serve-reward", "NaN request-timeout", lambda c: ["serve-reward", "brightness", "--request-timeout", "nan"],
     "finite"),
    ("serve-reward", "negative read-timeout", lambda c: ["serve-reward", "brightness", "--read-timeout", "-1"],
     "--read-timeout: -1 must be a number > 0"),
    ("serve-reward", "zero workers", lambda c: ["serve-reward", "brightness", "--workers", "0"],
     "--workers: 0 must be an integer > 0"),
    ("serve-reward", "negative max-pixels", lambda c: ["serve-reward", "brightness", "--max-pixels", "-1"],
     "--max-pixels: -1 must be an integer > 0"),
    ("serve-reward", "port out of range", lambda c: ["serve-reward", "brightness", "--port", "-1"], "out of range"),
    ("serve-reward", "argument without =", lambda c: ["serve-reward", "brightness", "--arg", "novalue"], "key=value"),
    ("user reward", "score raises", lambda c: sample(c, "--reward", R + "Raises"),
     "reward 'Raises' (tests.core.rewards_for_tests.Raises) raised RuntimeError: the model exploded ... "
     "(GENALIGN_DEBUG=1 shows where)"),
    ("user reward", "wrong count", lambda c: sample(c, "--reward", R + "WrongCount"),
     "reward 'WrongCount' (tests.core.rewards_for_tests.WrongCount) returned shape (2,); expected a (1,) tensor"),
    ("user reward", "strings", lambda c: sample(c, "--reward", R + "Strings"), "returned list ['good']; expected"),
    ("user reward", "infinite", lambda c: sample(c, "--reward", R + "Infinite"), "returned 1 infinite score(s) of 1"),
    ("user reward", "complex", lambda c: sample(c, "--reward", R + "ComplexScores"), "returned a torch.complex64 tensor"),
    ("user reward", "constructor raises", lambda c: sample(c, "--reward", R + "BrokenInit"),
     "(tests.core.rewards_for_tests.BrokenInit) could not be built: ImportError: No module named"),
    ("user reward", "function, wrong signature", lambda c: sample(c, "--reward", R + "wrong_signature"),
     "signature (images); a function reward must have the signature (samples, prompts, metadata) -> (N,) scores"),
    ("user reward", "function, argument without value", lambda c: sample(c, "--reward", R + "needs_threshold"),
     "extra parameter 'threshold' has no value"),
    ("user reward", "function, unknown argument", lambda c: sample(c, "--reward", "{name: '" + R + "mean_function', "
                                                                   "scael: 2}"), "unknown key"),
    ("user reward", "not callable", lambda c: sample(c, "--reward", R + "NOT_A_REWARD"),
     "names a int object, not a Reward class or a function"),
]


def test_bad_input_corpus(ctx, capsys):
    counts = collections.Counter()
    failures = []
    before = _snapshot(ctx["tmp"])
    for group, name, argv, needle in CASES:
        code = main(argv(ctx))
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        problems = []
        if code not in (1, 2):
            problems.append(f"exit {code}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines")
        if "Traceback" in cap.err + cap.out:
            problems.append("traceback")
        if lines and needle not in lines[0]:
            problems.append(f"missing {needle!r}")
        now = _snapshot(ctx["tmp"])
        if any(now.get(p) != v for p, v in before.items()):
            problems.append("wrote over an existing file")
        before = now
        counts[group, "ok" if not problems else "bad"] += 1
        if problems:
            failures.append((group, name, problems, lines[:3]))
    groups = sorted({g for g, _ in counts})
    print(f"\nbad-input corpus: {len(CASES)} inputs, {len(CASES) - len(failures)} one-line errors, "
          f"{sum('traceback' in f[2] for f in failures)} tracebacks, "
          f"{sum('wrote over an existing file' in f[2] for f in failures)} written over")
    for g in groups:
        print(f"  {g:16s} {counts[g, 'ok']:3d} / {counts[g, 'ok'] + counts[g, 'bad']}")
    assert not failures, failures


def test_sample_overwrite_replaces_only_genaligns_files(ctx):
    out = os.path.join(ctx["precious"], "samples")
    with open(os.path.join(out, "my_notes.md"), "w") as f:
        f.write("keep me")
    assert main(sample(ctx, "--seeds", "0", "1", "--overwrite", out=out)) == 0
    import json

    recs = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
    assert [(r["prompt"], r["seed"]) for r in recs] == [("a", 0), ("a", 1)]  # not appended to the earlier record
    assert open(os.path.join(out, "0000_seed0.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"  # the new sample
    assert open(os.path.join(out, "my_notes.md")).read() == "keep me"
    assert sorted(os.listdir(out)) == ["0000_seed0.png", "0001_seed1.png", "evals.jsonl", "grid.png", "my_notes.md",
                                       "samples.jsonl"]


def test_function_reward_and_yaml_override_values(ctx, tmp_path):
    import json

    from genalign.cli import _split_config_and_overrides
    from genalign.config import load_config

    out = str(tmp_path / "fn")
    assert main(sample(ctx, "--reward", "{name: '" + R + "mean_function', scale: 2.0}", out=out)) == 0
    rec = json.loads(open(os.path.join(out, "samples.jsonl")).readline())
    assert set(rec["rewards"]) == {"mean_function"} and 0.0 <= rec["rewards"]["mean_function"] <= 2.0
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("a red cube\na blue ball\n")
    config, overrides = _split_config_and_overrides([ctx["good"], f"data.prompts={prompts}", "train.seed=3"])
    assert config == ctx["good"] and overrides == [f"data.prompts={prompts}", "train.seed=3"]
    cfg = load_config(config, overrides)
    assert cfg.data.prompts == str(prompts) and cfg.train.seed == 3
    # a folder holding '=' is still a path, not an override
    assert _split_config_and_overrides(["runs/lr=1e-4/config.yaml"]) == ("runs/lr=1e-4/config.yaml", [])


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    from genalign.config import load_yaml

    p = tmp_path / "m.yaml"
    p.write_text("base: &b\n  seed: 1\n  iterations: 2\ntrain:\n  <<: *b\n  seed: 5\n")
    assert load_yaml(str(p))["train"] == {"seed": 5, "iterations": 2}
