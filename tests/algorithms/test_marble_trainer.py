"""MARBLE (METHODS.md §5) in the trainer: per-reward advantages, amortised per-reward gradient passes."""

import json
import os

import pytest
import torch

from genalign.algorithms.marble import Marble, combine
from genalign.config import make_algorithm
from genalign.errors import ConfigError

from .trainer_utils import batch_for, changed, make_config, snapshot, trainer_for

TWO = [{"name": "tests.algorithms.trainer_utils:Brightness"}, {"name": "tests.algorithms.trainer_utils:RedExcess"}]


def test_marble_run_changes_parameters_and_logs_alpha_and_cosines(tmp_path):
    cfg = make_config(tmp_path, {"name": "marble", "period": 2, "ref_weight": 0.0}, rewards=TWO, iterations=3)
    tr = trainer_for(cfg)
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)
    rows = [json.loads(l) for l in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    names = tr.reward_names
    # refreshes at the algorithm's optimiser steps 0 and 2 (period 2; one step per iteration)
    assert ["marble/min_cos" in r for r in rows] == [True, False, True]
    for r in (rows[0], rows[2]):
        # K = 2 with unit-normalised gradients: the min-norm point is the bisector, α* = (½, ½)
        assert r[f"marble/alpha_star_{names[0]}"] == pytest.approx(0.5, abs=1e-6)
        a = [r[f"marble/weight_{n}"] for n in names]
        assert sum(a) == pytest.approx(1.0) and min(a) >= 0
        # the applied direction has a non-negative cosine with every reward's gradient (MGDA property)
        assert r["marble/min_cos"] >= -1e-6
        assert r["marble/min_cos"] == pytest.approx(min(r[f"marble/cos_{n}"] for n in names))
        assert r["marble/min_cos_qp"] >= -1e-9  # MGDA: the QP direction is never anti-aligned
    # weights ∝ ᾱ_k/‖g_k‖ (loss_weights="normalized")
    r = rows[0]
    inv = [0.5 / r[f"marble/grad_norm_{n}"] for n in names]
    assert r[f"marble/weight_{names[0]}"] == pytest.approx(inv[0] / sum(inv), rel=1e-5)


def _two_reward_rollout(tmp_path, **alg_args):
    """A MARBLE trainer on two rewards, one rollout, fixed distinct per-reward advantages, two micro-batches."""
    cfg = make_config(tmp_path, {"name": "marble", "ref_weight": 1e-2, **alg_args}, rewards=TWO)
    tr = trainer_for(cfg)
    alg = tr.algorithm
    ro = tr.do_rollout(0)
    adv = torch.stack([torch.linspace(-3, 3, len(ro)), torch.linspace(2, -1, len(ro)) ** 2 - 1], 1)
    return tr, alg, batch_for(tr, ro, adv=adv), [[0, 1, 2], list(range(3, len(ro)))]


def _zero_grads(params):
    for p in params:
        p.grad = None


def test_refresh_gradient_equals_one_pass_with_the_mixed_optimality(tmp_path, monkeypatch):
    """L_NFT is affine in r: Σ_k w_k ∇L(r_k) (the K per-reward gradients) = ∇L(Σ_k w_k r_k) (one pass)."""
    tr, alg, batch, mbs = _two_reward_rollout(tmp_path)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    seen = {}

    def fixed_combine(view, grads, stats):  # the probe's K gradients, combined with fixed weights
        seen["grads"] = grads
        return combine(grads, w)

    monkeypatch.setattr(alg, "combine", fixed_combine)
    parts = [tr.parts["policy"]]
    params = parts[0].params
    nonfinite = tr.stepper.probe(alg, tr.view, batch, mbs, parts, 2, {}, [])
    assert float(nonfinite) == 0
    combined = [p.grad.clone() for p in params]
    grads = seen["grads"]
    _zero_grads(params)
    alg._w = w
    tr.stepper.accumulate_pass(alg, tr.view, batch, mbs, parts, {}, [])
    num = sum(((p.grad - c) ** 2).sum() for p, c in zip(params, combined))
    den = sum((c**2).sum() for c in combined)
    assert den > 0
    assert float(num / den) < 1e-8
    # and the per-reward gradients differ (otherwise the test would be vacuous)
    d = sum(((a - b) ** 2).sum() for a, b in zip(grads[0], grads[1]))
    assert float(d) > 1e-6 * float(den)


def test_marble_advantages_are_per_reward_and_nan_is_neutral(tmp_path):
    alg = make_algorithm(Marble, {})
    per = torch.tensor([[1.0, float("nan")], [3.0, float("nan")], [0.0, 2.0], [0.0, 4.0]])
    groups = torch.tensor([0, 0, 1, 1])
    adv, st, keep = alg.advantages(per, [1.0, 1.0], groups, ["a"] * 4, "sum_then_normalize")
    assert adv.shape == (4, 2) and keep.all()
    assert adv[0, 1] == 0 and adv[1, 1] == 0  # reward 2 does not apply to group 0 → A = 0 → r = ½
    assert adv[2, 0] == 0 and adv[3, 0] == 0  # zero-variance group
    # global std of reward 1 over its 4 values (population): std([1,3,0,0]) = 1.2247; group 0 mean 2
    assert float(adv[0, 0]) == pytest.approx(-1 / (1.224744871 + 1e-4), rel=1e-5)


def test_fixed_balance_keeps_equal_weights(tmp_path):
    cfg = make_config(tmp_path, {"name": "marble", "balance": "fixed", "period": 1, "ref_weight": 0.0},
                      rewards=TWO, iterations=1)
    tr = trainer_for(cfg)
    tr.train()
    row = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert [row[f"marble/weight_{n}"] for n in tr.reward_names] == [0.5, 0.5]
    sd = tr.algorithm.state_dict()
    assert torch.equal(sd["mix_weights"], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert int(sd["steps"]) == 1 and int(sd["smoother.num_updates"]) == 0


def test_refresh_fraction_estimates_on_a_subset_and_steps_on_the_whole_batch(tmp_path, monkeypatch):
    """refresh_fraction < 1: per-reward gradients from a random share of each micro-batch; the step's gradient is
    one r_mix pass over the whole batch under the refreshed weights."""
    tr, alg, batch, mbs = _two_reward_rollout(tmp_path, refresh_fraction=0.5)
    seen = []
    real = alg.losses

    def spy(view, b, items):
        if view.probe:
            seen.append(list(items))
        return real(view, b, items)

    monkeypatch.setattr(alg, "losses", spy)
    stats = {}
    parts = [tr.parts["policy"]]
    params = parts[0].params
    tr.stepper.probe(alg, tr.view, batch, mbs, parts, 2, stats, [])
    n = len(batch)
    assert [len(x) for x in seen] == [2, -(-(n - 3) // 2)]
    assert all(set(s) <= set(m) for s, m in zip(seen, mbs))
    assert stats["marble/min_cos"][0] >= -1e-6
    got = [p.grad.clone() for p in params]
    _zero_grads(params)
    tr.stepper.accumulate_pass(alg, tr.view, batch, mbs, parts, {}, [])
    assert all(torch.allclose(g, p.grad, atol=1e-7) for g, p in zip(got, params))


@pytest.mark.parametrize("args", [{"period": 0}, {"rho": 1.0}, {"min_norm": "adam"}, {"balance": "sum"},
                                  {"loss_weights": "raw"}, {"smoother_init": "zeros"},
                                  {"refresh_fraction": 0.0}, {"refresh_fraction": 1.5}])
def test_marble_config_errors(args):
    with pytest.raises(ConfigError):
        make_algorithm(Marble, args)


def test_marble_grpo_per_reward_passes_change_parameters(tmp_path):
    cfg = make_config(tmp_path, {"name": "marble_grpo", "clip_range": 1e-2, "beta": 0.0}, rewards=TWO, iterations=1)
    tr = trainer_for(cfg)
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)
    row = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert row["marble/min_cos"] >= -1e-6
    assert sum(row[f"marble/weight_{n}"] for n in tr.reward_names) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        make_algorithm(type(tr.algorithm), {"best_of_n": 2})
