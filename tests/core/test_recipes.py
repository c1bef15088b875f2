"""Every shipped recipe validates (schema, registry names, enums) and opens with the command that launches it."""

import glob
import os

import pytest
import yaml

from genalign.config import load_config

from .helpers import REPO

RECIPES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if os.sep + "accelerate" + os.sep not in p)


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.relpath(p, REPO) for p in RECIPES])
def test_recipe_validates_and_starts_with_its_command(path, monkeypatch):
    monkeypatch.chdir(REPO)
    first = open(path).readline()
    assert first.startswith("# ") and ("genalign" in first), f"{path} must open with its launch command"
    raw = yaml.safe_load(open(path))
    prompts = (raw.get("data") or {}).get("prompts")
    if isinstance(prompts, str) and prompts.startswith("runs/"):
        pytest.fail(f"{path} reads prompts from a generated folder")
    load_config(path)


def test_accelerate_configs_parse():
    for p in glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml")):
        d = yaml.safe_load(open(p))
        assert "distributed_type" in d and open(p).readline().startswith("# accelerate launch")


TOY_RECIPES = [p for p in RECIPES if os.sep + "toy" + os.sep in p]


@pytest.mark.parametrize("path", TOY_RECIPES, ids=[os.path.relpath(p, REPO) for p in TOY_RECIPES])
def test_toy_recipe_rewards_build_and_score(path, monkeypatch):
    """The toy recipes' rewards construct from their arguments (everything they need ships in assets/) and score
    a small batch of the recipe's prompts with finite values."""
    import torch

    from genalign.io import read_prompts
    from genalign.rewards.base import build_rewards

    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    prompts = [p for p in read_prompts(cfg.data.prompts)[:2] for _ in range(3)]
    from genalign.registry import MODELS

    if MODELS.get(cfg.model.family).modality == "audio":  # the tones recipes: real tones clips of the prompts
        from genalign.tones.data import all_labels, make_caption, make_clips

        by_caption = {lab.caption: lab for lab in all_labels()}
        for lab in all_labels():  # captions that leave the articulation open: a clip of either (the first drawn)
            by_caption.setdefault(make_caption(lab.root, lab.kind, lab.timbre), lab)
        x = make_clips([by_caption[p] for p in prompts], seed=0)
    else:
        x = torch.rand(len(prompts), 3, cfg.model.height, cfg.model.width, generator=torch.Generator().manual_seed(0))
    for reward in build_rewards(cfg.rewards):
        s = reward(x, prompts)
        assert s.shape == (len(prompts),) and torch.isfinite(s).all(), (reward.name, s)
