"""scripts/bench/pg_alignment.py: the pathwise reward gradient is an uphill direction on the digits world (the
reward rises along it and falls against it, while a random direction of the same length barely moves it), and the
digits world's GRPO score-function gradient leans the same way; a recipe whose reward is not differentiable is
refused in one line. The variance split and the reward-backprop ceiling run too."""

import importlib.util
import os

import pytest

from .helpers import REPO


def _script():
    spec = importlib.util.spec_from_file_location("pg_alignment", os.path.join(REPO, "scripts/bench/pg_alignment.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pathwise_direction_is_uphill_and_pg_leans_with_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _script().main(["configs/toy/flow_grpo.yaml", "--prompts", "4", "--group", "4", "--batches", "2",
                          "--alphas", "1e-3", "--line-prompts", "8", "--line-seeds", "2", "--variance", "--ascend", "10",
                          "--ascend-lr", "3e-4"])
    (_, up, down), = res["line"]["path"]
    (_, r_up, r_down), = res["line"]["random"]
    assert up > 0.01 and down < -0.01
    assert max(abs(r_up), abs(r_down)) < 0.2 * min(abs(up), abs(down))
    (_, pg_up, pg_down), = res["line"]["pg[plain]"]
    assert pg_up > pg_down
    for pg_pg, pg_path in res["schemes"].values():
        assert -1 <= pg_pg <= 1 and -1 <= pg_path <= 1
    sd = res["variance"]  # sharing more of the noise leaves less to tell a group's samples apart; all of it: none
    assert sd[0] > 0.1 and sd[-1] == 0.0 and sd[5] < sd[0]
    (s0, r0), (s1, r1) = res["ascend"]  # reward backprop climbs the held-out reward
    assert (s0, s1) == (0, 10) and r1 > r0 + 0.03


def test_non_differentiable_reward_is_refused(monkeypatch):
    from genalign.errors import GenalignError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GenalignError, match="not differentiable"):
        _script().main(["configs/toy/flow_grpo.yaml", "--set", "rewards=[{name: jpeg_compressibility}]"])
