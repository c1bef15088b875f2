"""A table of malformed inputs, tried as a new user would (CLI verbs run in-process through genalign.cli.main):
each must give exit status 2 (or 1), exactly one line on stderr, no traceback, and leave what was on disk before
exactly as it was. The test prints the counts per group.

Groups: YAML with repeated keys and override values that look like config files; out-of-range numbers given on the
command line (sample, eval, embed-exemplars, serve-reward); `sample --out` into a folder with earlier samples;
user rewards that raise, return the wrong thing, or are functions with the wrong signature; config values that
type-check but make no sense (NaN/inf, out-of-range betas, negative seeds and counts, empty lists); cross-field checks
(family vs. the pipeline's model_index.json, LoRA targets vs. the model's modules); registry names and the schema;
files (config, prompts, pipeline, output folder); resuming from damaged checkpoints (truncated optimizer, scheduler,
RNG and LoRA state); export of damaged checkpoints (plain and --fuse); the other verbs (sample, eval, report,
embed-exemplars, serve-reward).
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
    c["nan_lr"] = write("nan_lr.yaml", good.replace("learning_rate: 0.003", "learning_rate: .nan"))
    c["not_yaml"] = write("not_yaml.yaml", "train: [1, 2\n  seed: {\n")
    c["list_yaml"] = write("list_yaml.yaml", "- train\n- model\n")
    c["bad_jsonl"] = write("bad.jsonl", '{"prompt": "a"}\n{not json\n')
    c["nokey_jsonl"] = write("nokey.jsonl", '{"text": "a"}\n')
    c["empty_txt"] = write("empty.txt", "# only a comment\n\n")
    c["binary"] = str(tmp_path / "binary.yaml")
    with open(c["binary"], "wb") as f:
        f.write(b"\xff\xfe\x00garbage\x89")
    return c


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _trained_run(c, tiny_sd3, tmp_path):
    """A one-iteration run (checkpoint-1), and copies of it each with one damaged file."""
    import shutil

    from .helpers import write_config

    run = str(tmp_path / "trained")
    cfg = tiny_config(tiny_sd3, run, train__iterations=1)
    assert main(["train", write_config(tmp_path / "trained.yaml", cfg)]) == 0
    c["run"], c["ckpt"] = run, os.path.join(run, "checkpoints", "checkpoint-1")
    c["trained_cfg"] = str(tmp_path / "trained.yaml")
    damage = {"opt": ("optimizer.bin", 0.5), "sched": ("scheduler.bin", 0.3), "rng": ("random_states_0.pkl", 0.5),
              "lora": ("pytorch_lora_weights.safetensors", 0.6), "lora_head": ("pytorch_lora_weights.safetensors", 0.001),
              "state": ("trainer_state.json", 0.5), "noopt": ("optimizer.bin", None)}
    for key, (name, keep) in damage.items():
        d = str(tmp_path / f"damaged_{key}")
        shutil.copytree(run, d)
        f = os.path.join(d, "checkpoints", "checkpoint-1", name)
        os.remove(f) if keep is None else _truncate(f, keep)
        c[f"run_{key}"], c[f"ckpt_{key}"] = d, os.path.join(d, "checkpoints", "checkpoint-1")
    full = str(tmp_path / "damaged_full" / "checkpoints" / "checkpoint-1")  # a full fine-tune with truncated weights
    shutil.copytree(c["ckpt"], full)
    os.remove(os.path.join(full, "pytorch_lora_weights.safetensors"))
    import json

    state = json.load(open(os.path.join(full, "trainer_state.json")))
    state["lora"] = False
    json.dump(state, open(os.path.join(full, "trainer_state.json"), "w"))
    os.makedirs(os.path.join(full, "transformer"))
    shutil.copy(os.path.join(c["ckpt"], "pytorch_lora_weights.safetensors"),
                os.path.join(full, "transformer", "diffusion_pytorch_model.safetensors"))
    _truncate(os.path.join(full, "transformer", "diffusion_pytorch_model.safetensors"), 0.7)
    c["ckpt_full"] = full
    c["no_state"] = str(tmp_path / "no_state")
    os.makedirs(c["no_state"])
    c["export_full"] = str(tmp_path / "export_full")
    os.makedirs(c["export_full"])
    write(c, "export_full/keep.txt", "an earlier export")


def write(c, name, text):
    p = os.path.join(c["tmp"], name)
    with open(p, "w") as f:
        f.write(text)
    return p


def train(c, *over):
    return ["train", c["good"], *over]


def resume(c, key):
    return ["train", c["trained_cfg"], f"run.output_dir={c['run_' + key]}", "run.resume=true"]


def export(c, ckpt, *extra, out=None):
    return ["export", ckpt, "--out", out or os.path.join(c["tmp"], "exported"), *extra]


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
    # --- config values that type-check but make no sense (genalign/config_checks.py) -----------------------------
    ("config values", "infinite learning rate", lambda c: train(c, "train.learning_rate=.inf"),
     "'train.learning_rate' is inf; allowed: a number > 0"),
    ("config values", "NaN learning rate", lambda c: train(c, "train.learning_rate=.nan"),
     "'train.learning_rate' is nan; allowed: a number > 0"),
    ("config values", "zero learning rate", lambda c: train(c, "train.learning_rate=0"), "allowed: a number > 0"),
    ("config values", "Adam beta2 over 1", lambda c: train(c, "train.adam_betas=[0.9, 1.5]"),
     "'train.adam_betas.1' is 1.5; allowed: a number in [0, 1)"),
    ("config values", "negative Adam beta1", lambda c: train(c, "train.adam_betas=[-0.1, 0.999]"),
     "'train.adam_betas.0' is -0.1"),
    ("config values", "one Adam beta", lambda c: train(c, "train.adam_betas=[0.9]"), "two numbers in [0, 1)"),
    ("config values", "part's Adam beta 1.0", lambda c: train(c, "train.parts.fake_score.adam_betas=[1.0, 0.9]"),
     "'train.parts.fake_score.adam_betas.0' is 1.0; allowed: a number in [0, 1)"),
    ("config values", "part's negative learning rate", lambda c: train(c, "train.parts.head.learning_rate=-1"),
     "'train.parts.head.learning_rate' is -1.0"),
    ("config values", "part's EMA decay 1.5", lambda c: train(c, "train.parts.head.ema_decay=1.5"),
     "'train.parts.head.ema_decay' is 1.5"),
    ("config values", "part's infinite clip", lambda c: train(c, "train.parts.head.max_grad_norm=.inf"),
     "'train.parts.head.max_grad_norm' is inf"),
    ("config values", "negative seed", lambda c: train(c, "train.seed=-1"),
     "'train.seed' is -1; allowed: an integer in [0, 4.29497e+09]"),
    ("config values", "seed too large", lambda c: train(c, f"train.seed={2**40}"), "'train.seed' is 1099511627776"),
    ("config values", "negative SDE noise level", lambda c: train(c, "sampler.noise_level=-0.5"),
     "'sampler.noise_level' is -0.5; allowed: a number >= 0"),
    ("config values", "negative eta", lambda c: train(c, "sampler.eta=-1"), "'sampler.eta' is -1.0"),
    ("config values", "NaN guidance", lambda c: train(c, "sampler.guidance_scale=.nan"), "'sampler.guidance_scale' is nan"),
    ("config values", "zero time shift", lambda c: train(c, "sampler.shift=0"), "'sampler.shift' is 0.0; allowed: a number > 0"),
    ("config values", "window range 2", lambda c: train(c, "sampler.window_range=2"), "'sampler.window_range' is 2.0"),
    ("config values", "zero window", lambda c: train(c, "sampler.window_size=0"), "'sampler.window_size' is 0"),
    ("config values", "base expert from step 0", lambda c: train(c, "model.base_from=0"),
     "'model.base_from' is 0.0; allowed: a number in (0, 1)"),
    ("config values", "base expert after the last step", lambda c: train(c, "model.base_from=1"),
     "'model.base_from' is 1.0; allowed: a number in (0, 1)"),
    ("config values", "trained steps on the base expert's", lambda c: train(c, "model.base_from=0.3"),
     "(sampler.train_timesteps 'all_but_last'); end the window before step"),
    ("config values", "a window reaching the base expert's steps",
     lambda c: train(c, "model.base_from=0.25", "sampler.train_timesteps=window", "sampler.window_size=2"),
     "but the sampler's stochastic (trained) steps reach step"),
    ("config values", "timestep fraction 0", lambda c: train(c, "sampler.timestep_fraction=0"), "must be in (0, 1]"),
    ("config values", "negative save_every", lambda c: train(c, "train.save_every=-1"),
     "'train.save_every' is -1; allowed: an integer >= 0"),
    ("config values", "negative eval_every", lambda c: train(c, "train.eval_every=-5"), "'train.eval_every' is -5"),
    ("config values", "negative keep_checkpoints", lambda c: train(c, "train.keep_checkpoints=-1"),
     "'train.keep_checkpoints' is -1"),
    ("config values", "negative weight decay", lambda c: train(c, "train.weight_decay=-0.1"), "'train.weight_decay' is -0.1"),
    ("config values", "infinite grad clip", lambda c: train(c, "train.max_grad_norm=.inf"), "'train.max_grad_norm' is inf"),
    ("config values", "negative warm-up", lambda c: train(c, "train.warmup_steps=-1"), "'train.warmup_steps' is -1"),
    ("config values", "negative time limit", lambda c: train(c, "train.max_minutes=-1"), "'train.max_minutes' is -1.0"),
    ("config values", "EMA decay 1", lambda c: train(c, "train.ema.decay=1.0"), "'train.ema.decay'"),
    ("config values", "EMA every 0", lambda c: train(c, "train.ema.every=0"), "'train.ema.every' is 0"),
    ("config values", "negative thread count", lambda c: train(c, "train.num_threads=-2"), "'train.num_threads' is -2"),
    ("config values", "zero iterations", lambda c: train(c, "train.iterations=0"), "'train.iterations' must be > 0"),
    ("config values", "negative group size", lambda c: train(c, "data.group_size=-1"), "'data.group_size' must be > 0"),
    ("config values", "zero batch", lambda c: train(c, "train.train_batch_size=0"), "'train.train_batch_size' must be > 0"),
    ("config values", "empty eval seeds", lambda c: train(c, "data.eval_seeds=[]"),
     "'data.eval_seeds' is []; allowed: a non-empty list of seeds"),
    ("config values", "negative eval seed", lambda c: train(c, "data.eval_seeds=[0, -3]"), "'data.eval_seeds.1' is -3"),
    ("config values", "empty eval prompts", lambda c: train(c, "data.eval_prompts=[]"), "'data.eval_prompts' is []"),
    ("config values", "missing eval prompts file", lambda c: train(c, "data.eval_prompts=/no/such/eval.txt"),
     "'data.eval_prompts' file '/no/such/eval.txt' does not exist"),
    ("config values", "an empty prompt", lambda c: train(c, "data.prompts=['a cat', '  ']"),
     "'data.prompts.1' is an empty prompt"),
    ("config values", "empty prompts", lambda c: train(c, "data.prompts=[]"), "'data.prompts' is empty"),
    ("config values", "negative real batch", lambda c: train(c, "data.real_batch_size=-1"), "'data.real_batch_size' is -1"),
    ("config values", "NaN reward weight", lambda c: train(c, "rewards.0.weight=.nan"),
     "'rewards.0.weight' is nan; allowed: a finite number"),
    ("config values", "infinite reward weight", lambda c: train(c, "rewards.0.weight=-.inf"), "'rewards.0.weight' is -inf"),
    ("config values", "every reward weight 0", lambda c: train(c, "rewards.0.weight=0"), "every reward weight is 0"),
    ("config values", "LoRA alpha 0", lambda c: train(c, "model.lora.alpha=0"), "'model.lora.alpha' is 0.0"),
    ("config values", "LoRA dropout 1", lambda c: train(c, "model.lora.dropout=1"), "'model.lora.dropout' is 1.0"),
    ("config values", "negative LoRA rank", lambda c: train(c, "model.lora.rank=-1"), "'model.lora.rank' must be >= 0"),
    ("config values", "empty LoRA targets", lambda c: train(c, "model.lora.target_modules=[]"),
     "'model.lora.target_modules' is []"),
    ("config values", "zero T5 length", lambda c: train(c, "model.max_sequence_length=0"), "'model.max_sequence_length' is 0"),
    ("config values", "NaN algorithm argument", lambda c: train(c, "algorithm.clip_range=.nan"), "'algorithm.clip_range' is nan"),
    ("config values", "zero height", lambda c: train(c, "model.height=0"), "'model.height' must be > 0"),
    # --- cross-field: the family must load the pipeline folder; LoRA targets must name modules -----------------
    ("cross-field", "sd3 family on an eps UNet pipeline",
     lambda c: train(c, "model.path=assets/toy/digits_eps", "model.family=sd3"),
     "but 'assets/toy/digits_eps' holds a StableDiffusionPipeline (model_index.json); use family sd"),
    ("cross-field", "flux family on an SD3 pipeline", lambda c: train(c, "model.family=flux"),
     "'model.family' is 'flux' (loads FluxPipeline), but"),
    ("cross-field", "sd family on a flow pipeline", lambda c: train(c, "model.family=sd", "sampler.kernel=ddim"),
     "holds a StableDiffusion3Pipeline (model_index.json); use family sd3"),
    ("cross-field", "kernel the family lacks", lambda c: train(c, "sampler.kernel=ddim"), "'sampler.kernel' is 'ddim'"),
    ("cross-field", "LoRA targets that match nothing", lambda c: train(c, "model.lora.target_modules=[to_qq]"),
     "'model.lora.target_modules' ['to_qq'] match no module of the transformer; valid names include: "),
    ("cross-field", "one LoRA target of two matches nothing", lambda c: train(c, "model.lora.target_modules=[to_q, ff.bogus]"),
     "['ff.bogus'] match no module"),
    ("cross-field", "reward for another modality", lambda c: train(c, "rewards.0.name=loudness"), "scores audio"),
    # --- registry names and schema ------------------------------------------------------------------------------
    ("config schema", "unknown algorithm", lambda c: train(c, "algorithm.name=grpoo"), "grpoo"),
    ("config schema", "unknown algorithm argument", lambda c: train(c, "algorithm.clip_rang=0.1"), "clip_rang"),
    ("config schema", "unknown reward", lambda c: train(c, "rewards.0.name=no_such_reward"), "no_such_reward"),
    ("config schema", "unknown family", lambda c: train(c, "model.family=sd4"), "sd4"),
    ("config schema", "unknown top-level key", lambda c: train(c, "trian.seed=1"), "trian"),
    ("config schema", "wrong type", lambda c: train(c, "train.iterations=many"), "'train.iterations' must be an integer"),
    ("config schema", "unknown enum value", lambda c: train(c, "train.mixed_precision=fp8"), "valid choices: bf16, fp16, no"),
    ("config schema", "unknown tracker", lambda c: train(c, "run.log_with=[mlflow]"), "'run.log_with' has 'mlflow'"),
    ("config schema", "unknown task", lambda c: train(c, "task=t2v"), "'task' is 't2v'"),
    ("config schema", "override into a value", lambda c: train(c, "train.seed.x=1"), "is not a section"),
    ("config schema", "override with empty key", lambda c: train(c, "=3"), "unexpected argument"),
    ("config schema", "empty model path", lambda c: train(c, "model.path=''"), "'model.path' is empty"),
    # --- files: config, prompts, pipeline, output folder ---------------------------------------------------------
    ("files", "config file missing", lambda c: ["train", "/no/such/config.yaml"], "does not exist"),
    ("files", "config path is a folder", lambda c: ["train", c["tmp"]], "is a directory"),
    ("files", "config not YAML", lambda c: ["train", c["not_yaml"]], "is not valid YAML at line"),
    ("files", "config is binary", lambda c: ["train", c["binary"]], "binary.yaml"),
    ("files", "config is a list", lambda c: ["train", c["list_yaml"]], "must contain a mapping at top level"),
    ("files", "prompts file missing", lambda c: train(c, "data.prompts=/no/such/prompts.txt"), "does not exist"),
    ("files", "prompts .jsonl with a bad line", lambda c: train(c, f"data.prompts={c['bad_jsonl']}"),
     "line 2 is not valid JSON"),
    ("files", "prompts .jsonl without 'prompt'", lambda c: train(c, f"data.prompts={c['nokey_jsonl']}"),
     "line 1 has no 'prompt' key"),
    ("files", "prompts file without prompts", lambda c: train(c, f"data.prompts={c['empty_txt']}"), "contains no prompts"),
    ("files", "model path missing", lambda c: train(c, "model.path=/no/such/pipeline"), "does not exist"),
    ("files", "model path not a pipeline", lambda c: train(c, f"model.path={c['no_state']}"), "no model_index.json"),
    ("files", "output_dir is a file", lambda c: train(c, f"run.output_dir={c['a_file']}"), "is a file, not a folder"),
    ("files", "output_dir holds a run", lambda c: train(c, f"run.output_dir={c['run']}"), "is not empty"),
    ("files", "output_dir holds user files", lambda c: train(c, f"run.output_dir={c['precious']}"), "is not empty"),
    # --- corrupt checkpoints on resume ---------------------------------------------------------------------------
    ("resume", "truncated optimizer state", lambda c: resume(c, "opt"), "optimizer.bin' is truncated or corrupt"),
    ("resume", "truncated scheduler state", lambda c: resume(c, "sched"), "scheduler.bin' is truncated or corrupt"),
    ("resume", "truncated RNG state", lambda c: resume(c, "rng"), "random_states_0.pkl' is truncated or corrupt"),
    ("resume", "truncated LoRA weights", lambda c: resume(c, "lora"),
     "pytorch_lora_weights.safetensors' is truncated or corrupt"),
    ("resume", "missing optimizer state", lambda c: resume(c, "noopt"), "has no optimizer.bin"),
    ("resume", "corrupt trainer_state.json", lambda c: resume(c, "state"), "is incomplete or corrupt"),
    ("resume", "another model's checkpoint", lambda c: resume(c, "opt")[:2] + [f"run.output_dir={c['run']}",
     "run.resume=true", "model.lora.rank=8"], "cannot be loaded into this run"),
    # --- export ---------------------------------------------------------------------------------------------------
    ("export", "truncated LoRA", lambda c: export(c, c["ckpt_lora"]), "LoRA weights '"),
    ("export", "LoRA file cut inside its header", lambda c: export(c, c["ckpt_lora_head"]), "is truncated or corrupt"),
    ("export", "--fuse of a truncated LoRA", lambda c: export(c, c["ckpt_lora"], "--fuse"), "is truncated or corrupt"),
    ("export", "--fuse of truncated full weights", lambda c: export(c, c["ckpt_full"], "--fuse"),
     "diffusion_pytorch_model.safetensors' is truncated or corrupt"),
    ("export", "a file, not a checkpoint folder", lambda c: export(c, c["a_file"]), "is a file, not a checkpoint folder"),
    ("export", "missing checkpoint", lambda c: export(c, "/no/such/checkpoint-3"), "does not exist"),
    ("export", "a folder that is no checkpoint", lambda c: export(c, c["no_state"]), "no trainer_state.json"),
    ("export", "corrupt trainer_state.json", lambda c: export(c, c["ckpt_state"]), "corrupt trainer_state.json"),
    ("export", "--ema without EMA", lambda c: export(c, c["ckpt"], "--ema"), "has no EMA weights"),
    ("export", "--out is a file", lambda c: export(c, c["ckpt"], out=c["a_file"]), "is a file, not a folder"),
    ("export", "--out holds an earlier export", lambda c: export(c, c["ckpt"], out=c["export_full"]), "--overwrite"),
    ("export", "--fuse onto a missing base", lambda c: export(c, c["ckpt"], "--fuse", "--model", "/no/such/base"),
     "cannot load the base pipeline '/no/such/base'"),
    ("export", "--overwrite with a truncated LoRA", lambda c: export(c, c["ckpt_lora"], "--overwrite", out=c["export_full"]),
     "is truncated or corrupt"),
    # --- sample / eval / report / embed-exemplars / serve-reward ------------------------------------------------
    ("sample", "truncated LoRA", lambda c: sample(c, "--lora", c["ckpt_lora"]), "cannot load LoRA"),
    ("sample", "missing LoRA", lambda c: sample(c, "--lora", "/no/such/lora"), "do not exist"),
    ("sample", "family that does not fit", lambda c: sample(c, "--family", "flux"), "holds a StableDiffusion3Pipeline"),
    ("sample", "missing prompts file", lambda c: ["sample", "--model", c["model"], "--prompts", "/no/such.txt", "--out",
                                                  os.path.join(c["tmp"], "fresh")], "does not exist"),
    ("sample", "no prompt", lambda c: ["sample", "--model", c["model"], "--out", os.path.join(c["tmp"], "fresh")],
     "give --prompt TEXT"),
    ("eval", "config with a NaN learning rate", lambda c: ["eval", c["nan_lr"]], "'train.learning_rate' is nan"),
    ("eval", "missing checkpoint", lambda c: ["eval", c["good"], "--checkpoint", "/no/such/ckpt"], "/no/such/ckpt"),
    ("eval", "--checkpoint is a file", lambda c: ["eval", c["trained_cfg"], "--checkpoint", c["a_file"]],
     "is a file, not a checkpoint folder"),
    ("eval", "--checkpoint with a truncated LoRA", lambda c: ["eval", c["trained_cfg"], "--checkpoint", c["ckpt_lora"]],
     "are corrupt or unreadable"),
    ("report", "missing run folder", lambda c: ["report", "/no/such/run"], "/no/such/run"),
    ("report", "a file, not a run", lambda c: ["report", c["a_file"]], "a_file"),
    ("embed-exemplars", "--out not .safetensors", lambda c: ["embed-exemplars", "--encoder", "digits", "--reference",
                                                            c["tmp"], "--out", "e.pt"], "must end in .safetensors"),
    ("embed-exemplars", "missing reference", lambda c: ["embed-exemplars", "--encoder", "digits", "--reference",
                                                       "/no/such/ref", "--out", "e.safetensors"], "/no/such/ref"),
    ("serve-reward", "unknown reward", lambda c: ["serve-reward", "no_such_reward"], "no_such_reward"),
    ("serve-reward", "port over 65535", lambda c: ["serve-reward", "brightness", "--port", "70000"], "out of range"),
]


def test_bad_input_corpus(ctx, tiny_sd3, tmp_path, capsys):
    _trained_run(ctx, tiny_sd3, tmp_path)
    capsys.readouterr()
    counts = collections.Counter()
    failures = []
    before = _snapshot(ctx["tmp"])
    for group, name, argv, needle in CASES:
        problems = []
        try:
            code = main(argv(ctx))
        except SystemExit as e:
            code = e.code
        except Exception as e:  # noqa: BLE001 - an escaped exception is a traceback for the user: count it
            code, problems = None, [f"traceback ({type(e).__name__}: {str(e)[:200]})"]
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        if code not in (1, 2) and not problems:
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
          f"{sum(any(p.startswith('traceback') for p in f[2]) for f in failures)} tracebacks, "
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
