"""DRAGON (METHODS.md §6) in the trainer: D⁺/D⁻ splits, Diffusion-DPO / Diffusion-KTO against the base."""

import math

import pytest
import torch

from genalign.algorithms.dragon import Dragon
from genalign.config import make_algorithm
from genalign.errors import ConfigError

from .trainer_utils import batch_for, changed, make_config, snapshot, trainer_for, update_once


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_dragon_run_changes_parameters(tmp_path, loss):
    cfg = make_config(tmp_path, {"name": "dragon", "loss": loss}, iterations=1)
    tr = trainer_for(cfg)
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)


def test_first_update_starts_from_the_neutral_loss(tmp_path):
    """At θ = reference (LoRA B = 0) every Δ = 0: DPO loss = log 2, KTO loss = λ·(1 − σ(0)) = ½."""
    for loss, expected in (("dpo", math.log(2.0)), ("kto", 0.5)):
        cfg = make_config(tmp_path / loss, {"name": "dragon", "loss": loss})
        tr = trainer_for(cfg)
        ro = tr.do_rollout(0)
        per, groups, prompts = tr.score(ro)
        tr.algorithm.advantages(per, [1.0], groups, prompts, cfg.reward_aggregation)
        pos, neg, st = tr.algorithm.split_sets(tr.view, batch_for(tr, ro, per, groups, prompts))
        assert st["dragon/n_pos"] == len(pos) > 0 and st["dragon/score_pos"] > st["dragon/score_neg"]
        part = list(zip(pos.tolist(), neg.tolist())) if loss == "dpo" else [(int(i), 1) for i in pos] + [(int(i), 0) for i in neg]
        value, _ = tr.algorithm._unit_loss(tr.view, ro, part, 0, tr.algorithm.effective_beta, None)
        assert float(value.detach()) == pytest.approx(expected, rel=1e-5)


def test_instance_split_is_per_prompt_group(tmp_path):
    cfg = make_config(tmp_path, {"name": "dragon"})
    tr = trainer_for(cfg)
    alg = tr.algorithm
    per = torch.tensor([[0.1], [0.5], [0.3], [0.9], [0.2], [0.4]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    alg.advantages(per, [1.0], groups, ["a"] * 6, "sum_then_normalize")
    batch = batch_for(tr, None, per, groups, ["a"] * 6)
    pos, neg, _ = alg.split_sets(tr.view, batch)
    assert pos.tolist() == [1, 3] and neg.tolist() == [0, 4]  # each group's median (0.3, 0.4) is dropped
    alg.split_scope = "batch"
    pos, neg, _ = alg.split_sets(tr.view, batch)  # batch median 0.35
    assert pos.tolist() == [1, 3, 5] and neg.tolist() == [0, 2, 4]


@pytest.mark.parametrize("reward", ["SetBrightnessGap", "SetBrightnessGapContrib"])
def test_set_split_by_leave_one_out_contribution(tmp_path, reward):
    """Broadcast set values → LOO computed by DRAGON; contribution-scoring rewards → their scores as given."""
    cfg = make_config(tmp_path, {"name": "dragon", "split": "set", "loss": "kto"},
                      rewards=[{"name": f"tests.algorithms.trainer_utils:{reward}", "target": 0.8}],
                      iterations=1)
    tr = trainer_for(cfg)
    alg = tr.algorithm
    ro = tr.do_rollout(0)
    # synthetic samples with known brightness: the set is too dark, so bright samples contribute positively
    levels = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    ro.samples = levels.reshape(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    per, groups, prompts = tr.score(ro)
    if reward == "SetBrightnessGap":
        assert torch.allclose(per, per[0])  # the set value broadcast to every sample
    else:  # contributions R(D) − R(D∖i): mean(D) = 0.5 → R = −0.3; i = 0 (0.1): mean(D∖0) = 0.58 → R = −0.22
        assert float(per[0, 0]) == pytest.approx(-0.3 + 0.22, abs=1e-5)
    alg.advantages(per, [1.0], groups, prompts, cfg.reward_aggregation)
    batch = batch_for(tr, ro, per, groups, prompts)
    pos, neg, st = alg.split_sets(tr.view, batch)
    assert pos.tolist() == [1, 3, 5] and neg.tolist() == [0, 2, 4]
    assert st["dragon/set_value_pos"] > st["dragon/set_value_neg"]
    before = snapshot(tr)
    out = update_once(tr, batch)
    assert out["dragon/n_items"] == 6 and out["loss"] == out["loss"]
    assert changed(tr, before) == len(before)


def test_set_split_with_per_prompt_vendi(tmp_path):
    """Per-prompt Vendi through DRAGON: contributions within each prompt's group, verified on subsets by prompt."""
    cfg = make_config(tmp_path, {"name": "dragon", "split": "set", "loss": "kto", "split_mode": "quantile",
                                 "quantile": 0.34},
                      rewards=[{"name": "vendi", "encoder": "tests.algorithms.trainer_utils:mean_rgb",
                                "per_prompt": True}], iterations=1)
    tr = trainer_for(cfg)
    alg = tr.algorithm
    ro = tr.do_rollout(0)
    # prompt A: red, green, blue (Vendi 3, removing any leaves 2); prompt B: three blues (1, unchanged);
    # R = mean over the 2 prompts, so the contributions are (3 − 2) / 2 and 0
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 1)]
    ro.samples = torch.tensor(colours, dtype=torch.float32).reshape(6, 3, 1, 1).expand(6, 3, 4, 4).clone()
    per, groups, prompts = tr.score(ro)
    assert prompts[0] == prompts[1] == prompts[2] != prompts[3] == prompts[4] == prompts[5]
    assert per[:, 0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0, 0, 0], abs=1e-6)
    alg.advantages(per, [1.0], groups, prompts, cfg.reward_aggregation)
    batch = batch_for(tr, ro, per, groups, prompts)
    pos, neg, st = alg.split_sets(tr.view, batch)
    assert pos.tolist() == [0, 1, 2] and neg.tolist() == [3, 4, 5]  # ties at the quantile kept on both sides
    # R(D⁺) = Vendi(red, green, blue) = 3 within prompt A; R(D⁻) = Vendi(blue ×3) = 1 within prompt B
    assert st["dragon/set_value_pos"] == pytest.approx(3.0) and st["dragon/set_value_neg"] == pytest.approx(1.0)
    assert st["dragon/set_value_batch"] == pytest.approx((3 + 1) / 2)


def test_dragon_dpo_on_an_eps_prediction_model(tmp_path):
    cfg = make_config(tmp_path, {"name": "dragon", "loss": "dpo", "stochastic_rollout": True}, family="sd",
                      iterations=1)
    tr = trainer_for(cfg)
    assert tr.algorithm.needs_log_probs
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)


@pytest.mark.parametrize("args", [{"loss": "ipo"}, {"split": "pairs"}, {"split_mode": "mean"}, {"beta": -1.0},
                                  {"quantile": 0.7}, {"set_contribution": "shapley"}, {"num_timesteps": 0}])
def test_dragon_config_errors(args):
    with pytest.raises(ConfigError):
        make_algorithm(Dragon, args)


def test_samples_are_gathered_once_per_iteration(tmp_path):
    """A set-scope reward, DRAGON's set split and the trainer share one gather of the rollout's samples."""
    cfg = make_config(tmp_path, {"name": "dragon", "split": "set", "loss": "kto"},
                      rewards=[{"name": "tests.algorithms.trainer_utils:SetBrightnessGap", "target": 0.8},
                               {"name": "tests.algorithms.trainer_utils:SetBrightnessGapContrib", "target": 0.5}],
                      iterations=1)
    tr = trainer_for(cfg)
    seen = []
    tr.rewards[0].monitor = True  # a monitored reward (as the adversarial one) reads the same gathered samples
    tr.rewards[0].monitors = lambda x, prompts, meta: seen.append(x) or {"n": float(len(x))}
    calls = []
    inner = tr.accelerator.gather

    def counting(t):
        calls.append(tuple(t.shape))
        return inner(t)

    tr.accelerator.gather = counting
    tr.iterate(0)
    image_calls = [s for s in calls if len(s) == 4]
    assert len(image_calls) == 1, calls
    assert len(seen) == 1 and seen[0].shape[0] == tr.n_local * tr.world
    assert tr._gathered is None  # released with the iteration
