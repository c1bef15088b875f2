"""Recipes that claim a reference's settings use them.

A recipe claims a reference with a header line ``# reference: <name>``; this test holds each reference's values
(METHODS.md §3.8, and for the T5 length and the CFG branch the reference code: yifan123/flow_grpo
scripts/train_sd3.py encodes prompts and the empty negative prompt with ``max_sequence_length=128``, and
recomputes the unconditional branch with gradients in training) and checks every one of them in the resolved
config, so that a recipe cannot drift from what its header says."""

import glob
import os
import re

import pytest

from genalign.config import load_config

from .helpers import REPO

JOINT_ATTENTION = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                   "attn.add_v_proj", "attn.to_add_out"]

_SD35M_COMMON = {
    "model.family": "sd3", "model.path": "stabilityai/stable-diffusion-3.5-medium", "model.height": 512,
    "model.width": 512, "model.max_sequence_length": 128, "model.lora.rank": 32, "model.lora.alpha": 64,
    "model.lora.init": "gaussian", "model.lora.target_modules": None, "model.dtype": "fp16",
    "sampler.num_steps": 10, "sampler.eval_num_steps": 40, "sampler.kernel": "sde", "sampler.detach_uncond": False,
    "train.learning_rate": 3e-4, "train.weight_decay": 1e-4, "train.adam_betas": [0.9, 0.999],
    "train.max_grad_norm": 1.0, "train.mixed_precision": "fp16", "train.ema.decay": 0.9, "train.ema.every": 8,
    "train.optimizer_steps_per_iteration": 2, "train.inner_epochs": 1,
    "algorithm.name": "grpo", "algorithm.adv_std": "global",
}

REFERENCES = {
    # METHODS.md §3.8 "SD3.5-M Flow-GRPO" + config/grpo.py::pickscore_sd3 (β 0.01 for PickScore)
    "flow_grpo_sd35m_pickscore": {
        **_SD35M_COMMON, "sampler.guidance_scale": 4.5, "sampler.noise_level": 0.7,
        "sampler.train_timesteps": "all_but_last", "sampler.timestep_fraction": 0.99, "data.group_size": 24,
        "data.prompts_per_iteration": 48, "train.rollout_batch_size": 9, "train.train_batch_size": 9,
        "algorithm.clip_range": 1e-4, "algorithm.beta": 0.01, "algorithm.kl_form": "flow_grpo",
        "algorithm.adv_eps": 1e-4, "algorithm.adv_clip_max": 5.0,
    },
    # METHODS.md §3.8 "Flow-GRPO-Fast / nocfg": CFG 1 (train.cfg = False), window 2-3 in [0, T/2), β 0, clip 1e-5
    "flow_grpo_sd35m_fast_nocfg": {
        **_SD35M_COMMON, "sampler.guidance_scale": 1.0, "sampler.noise_level": 0.7, "sampler.train_timesteps": "window",
        "sampler.window_size": 2, "sampler.window_range": 0.5, "data.group_size": 24, "algorithm.clip_range": 1e-5,
        "algorithm.beta": 0.0,
    },
    # METHODS.md §7 / showlab/Adv-GRPO dino_cotrain_sd3_patch_fast (a Flow-GRPO fork: T5 length 128 too)
    "adv_grpo_sd35m_dino": {
        **_SD35M_COMMON, "train.optimizer_steps_per_iteration": 2, "sampler.guidance_scale": 4.5,
        "sampler.noise_level": 0.8, "sampler.train_timesteps": "window", "sampler.window_size": 2,
        "sampler.window_range": 0.5, "data.group_size": 16, "algorithm.clip_range": 1e-5, "algorithm.beta": 0.0,
    },
    # METHODS.md §3.8 "FLUX.1-dev DanceGRPO" (LoRA variant r 128 / α 256)
    "dance_grpo_flux": {
        "model.family": "flux", "model.height": 720, "model.width": 720, "model.lora.rank": 128,
        "model.lora.alpha": 256, "sampler.num_steps": 16, "sampler.shift": 3.0, "sampler.kernel": "eta",
        "sampler.eta": 0.3, "sampler.guidance_scale": 3.5, "sampler.same_initial_noise": True,
        "sampler.train_timesteps": "random_subset", "sampler.timestep_fraction": 0.6, "data.group_size": 12,
        "train.learning_rate": 1e-5, "train.mixed_precision": "bf16", "train.max_grad_norm": 1.0,
        "algorithm.clip_range": 1e-4, "algorithm.beta": 0.0, "algorithm.adv_std": "group", "algorithm.adv_eps": 1e-8,
        "algorithm.adv_unbiased_std": True,
    },
    # METHODS.md §3.8 "SD1.5 DDPO"
    "ddpo_sd15": {
        "model.family": "sd", "model.height": 512, "model.width": 512, "model.lora.rank": 4,
        "sampler.num_steps": 50, "sampler.kernel": "ddim", "sampler.eta": 1.0, "sampler.guidance_scale": 5.0,
        "sampler.train_timesteps": "random_subset", "sampler.timestep_fraction": 1.0, "train.learning_rate": 3e-4,
        "train.mixed_precision": "fp16", "train.max_grad_norm": 1.0, "train.ema.decay": 0.0,
        "algorithm.clip_range": 1e-4, "algorithm.beta": 0.0, "algorithm.adv_std": "buffer",
        "algorithm.buffer_size": 16, "algorithm.buffer_min_count": 16, "algorithm.adv_eps": 1e-6,
    },
}

RECIPES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if os.sep + "accelerate" + os.sep not in p)
CLAIM = re.compile(r"^# reference: ([a-z0-9_]+)\b", re.M)


def _header(path):
    lines = []
    for line in open(path):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def claimed(path):
    return CLAIM.findall(_header(path))


CLAIMING = [p for p in RECIPES if claimed(p)]


def resolved(cfg, key):
    """A dotted key of the resolved config; ``algorithm.*`` reads the algorithm's dataclass (defaults included)."""
    from genalign.config import make_algorithm
    from genalign.registry import ALGORITHMS

    head, _, rest = key.partition(".")
    if head == "algorithm":
        if rest == "name":
            return cfg.algorithm.name
        return getattr(make_algorithm(ALGORITHMS.get(cfg.algorithm.name), cfg.algorithm.args), rest)
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_reference_recipes_claim_their_reference():
    names = {os.path.relpath(p, REPO): claimed(p) for p in CLAIMING}
    assert names.get(os.path.join("configs", "sd35", "flow_grpo_pickscore.yaml")) == ["flow_grpo_sd35m_pickscore"]
    assert names.get(os.path.join("configs", "sd35", "flow_grpo_fast_nocfg.yaml")) == ["flow_grpo_sd35m_fast_nocfg"]
    # every recipe that cites the reference table names which column it follows
    for p in RECIPES:
        if "§3.8" in _header(p):
            assert claimed(p), f"{p} cites METHODS.md §3.8 but claims no '# reference: <name>'"


@pytest.mark.parametrize("path", CLAIMING, ids=[os.path.relpath(p, REPO) for p in CLAIMING])
def test_recipe_uses_the_reference_values(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    for name in claimed(path):
        assert name in REFERENCES, f"{path} claims unknown reference '{name}' (known: {sorted(REFERENCES)})"
        wrong = {}
        for key, want in REFERENCES[name].items():
            got = resolved(cfg, key)
            same = got == pytest.approx(want) if isinstance(want, float) and got is not None else got == want
            if not same:
                wrong[key] = (got, want)
        assert not wrong, f"{os.path.relpath(path, REPO)} differs from '{name}': {wrong}"


def test_the_t5_length_reaches_the_encoder(tiny_sd3):
    """``model.max_sequence_length`` is what the adapter encodes with: the SD3 context is 77 CLIP tokens + the T5
    length (zero-padded when the pipeline has no T5)."""
    from genalign.config import ModelConfig
    from genalign.models.sd3 import SD3Generator

    g = SD3Generator.load(ModelConfig(family="sd3", path=tiny_sd3, height=32, width=32, max_sequence_length=128))
    c = g.encode(["a red cube"], 4.5)
    assert c["pos"]["enc"].shape[1] == 77 + 128 and c["neg"]["enc"].shape[1] == 77 + 128
