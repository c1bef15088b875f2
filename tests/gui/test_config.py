"""GuiConfig: the shipped YAMLs validate through the top-level config; bad values give one-line errors."""

import copy
import dataclasses
import os

import pytest

from genalign.config import build_config, from_dict, load_config
from genalign.errors import ConfigError
from genalign.gui.config import GuiConfig, gui_config_from, validate_gui

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_field_has_help():
    for f in dataclasses.fields(GuiConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("name", ["gui_g2_qwen25vl_7b.yaml", "toy_gui_g2.yaml"])
def test_shipped_configs(name):
    path = os.path.join(ROOT, "configs", "gui", name)
    first = open(path).readline()
    assert first.startswith("# accelerate launch") and f"-m genalign train configs/gui/{name}" in first
    cfg = load_config(path)
    g = gui_config_from(cfg)
    assert cfg.task == "gui"
    # the paper's GRPO preset, set explicitly (trl defaults: beta 0.0, loss_type dapo)
    assert (g.num_generations, g.beta, g.epsilon, g.temperature, g.loss_type, g.scale_rewards) == (
        8, 0.04, 0.2, 1.0, "grpo", "group")
    assert g.rewards == ["gaussian_point", "gaussian_coverage"] and g.reward_weights == [1.0, 1.0]
    if "7b" in name:
        assert g.learning_rate == 1e-6 and g.max_pixels == 12_845_056 and g.min_pixels == 3136


def test_grpo_args_are_explicit(tmp_path):
    from genalign.gui.train import grpo_args

    g = GuiConfig(model="m", train_data="d")
    a = grpo_args(g, str(tmp_path), seed=3)
    assert (a.beta, a.epsilon, a.loss_type, a.scale_rewards, a.num_generations, a.learning_rate) == (
        0.04, 0.2, "grpo", "group", 8, 1e-6)
    assert a.reward_weights == [1.0, 1.0] and a.temperature == 1.0 and a.seed == 3 and a.num_iterations == 1
    assert a.gradient_checkpointing is True and a.remove_unused_columns is False


def test_errors_are_one_line():
    base = {"task": "gui", "gui": {"model": "m", "train_data": "d"}}
    with pytest.raises(ConfigError, match="unknown key 'gui.modle'"):
        build_config({"task": "gui", "gui": {"modle": "x"}}, [])
    with pytest.raises(ConfigError, match="'gui.num_generations' must be an integer"):
        build_config(copy.deepcopy(base), ["gui.num_generations=eight"])
    cases = [
        (["gui.loss_type=ppo"], "gui.loss_type"),
        (["gui.rewards=[gaussian_point,nope]", "gui.reward_weights=[1,1]"], "valid choices"),
        (["gui.reward_weights=[1]"], "reward_weights"),
        (["gui.coord_frame=pixels"], "gui.coord_frame"),
        (["gui.num_generations=1"], "num_generations"),
        (["gui.model="], "gui.model"),
        (["gui.min_pixels=100000", "gui.max_pixels=1000"], "min_pixels"),
        (["gui.prompt_template=no placeholder"], "instruction"),
    ]
    for overrides, msg in cases:  # semantic errors surface when the config is built, before any model loads
        with pytest.raises(ConfigError, match=msg) as e:
            build_config(copy.deepcopy(base), overrides)
        assert "\n" not in str(e.value)


def test_from_dict_roundtrip():
    g = from_dict(GuiConfig, {"model": "x", "train_data": "y", "learning_rate": "1e-5"}, prefix="gui.")
    assert g.learning_rate == 1e-5 and validate_gui(g) is g
