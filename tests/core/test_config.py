import pytest

from genalign.config import Config, build_config, load_config
from genalign.errors import ConfigError


def base(**kw):
    raw = {"model": {"path": "x"}, "data": {"prompts": ["a"]}, "rewards": ["tests.core.rewards_for_tests:MeanBrightness"]}
    raw.update(kw)
    return raw


def test_defaults_and_overrides():
    cfg = build_config(base(), ["train.learning_rate=1e-4", "algorithm.beta=0.04", "model.lora.rank=8",
                                "data.eval_seeds=[5, 6]", "rewards.0.weight=2"])
    assert isinstance(cfg, Config)
    assert cfg.train.learning_rate == 1e-4
    assert cfg.algorithm.args == {"beta": 0.04}
    assert cfg.model.lora.rank == 8
    assert cfg.data.eval_seeds == [5, 6]
    assert cfg.rewards[0].weight == 2.0


def test_yaml_float_without_dot_is_accepted():
    cfg = build_config(base(train={"learning_rate": "3e-4"}))
    assert cfg.train.learning_rate == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "raw,overrides,needle",
    [
        (base(trian={}), [], "unknown key 'trian'"),
        (base(train={"learning_rte": 1}), [], "unknown key 'train.learning_rte'"),
        (base(train={"iterations": "many"}), [], "'train.iterations' must be an integer"),
        (base(sampler={"kernel": "magic"}), [], "valid choices"),
        (base(algorithm={"name": "ppo2"}), [], "unknown algorithm 'ppo2'"),
        (base(algorithm={"name": "grpo", "clip": 1}), [], "unknown key 'algorithm.clip'"),
        (base(rewards=["no_such_reward"]), [], "unknown reward 'no_such_reward'"),
        (base(model={"path": "x", "family": "sd9"}), [], "unknown model family 'sd9'"),
        (base(), ["train.learning_rate"], "must look like key=value"),
        (base(), ["train.learning_rate=-1"], "'train.learning_rate' is -1.0; allowed: a number > 0"),
        (base(train={"ema": {"decay": 1.5}}), [], "train.ema.decay"),
        (base(algorithm={"name": "grpo", "kl_form": "weird"}), [], "kl_form"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(raw, overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config(raw, overrides)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_reward_lists_valid_choices():
    with pytest.raises(ConfigError) as e:
        build_config(base(rewards=["nope"]))
    assert "valid choices" in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(str(p))
