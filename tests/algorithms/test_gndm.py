"""GNDM [R] on the trainer: the DM re-noising draws are shared within a prompt group (and do not depend on how a
batch is split), the group normalisation of R_dm then cancels per-group offsets and scales, and both estimators
train the student and the fake score (tiny models)."""

import json
import os
import types

import pytest
import torch

from genalign.algorithms.dmd2 import per_sample_draws
from genalign.errors import ConfigError
from genalign.losses.gndm import dm_reward, group_normalise
from tests.algorithms.trainer_utils import changed, make_config, snapshot, trainer_for


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _view(iteration=3):
    return types.SimpleNamespace(cfg=types.SimpleNamespace(train=types.SimpleNamespace(seed=7)), iteration=iteration,
                                 device=torch.device("cpu"))


def test_gndm_draws_are_shared_by_a_group_and_independent_of_the_split():
    from genalign.algorithms.gndm import GNDM

    alg = GNDM(estimator="pathwise")
    ro = types.SimpleNamespace(group_ids=torch.tensor([4, 4, 9, 9, 2, 2]), seeds=[10, 11, 12, 13, 14, 15])
    keys = alg.dm_keys(ro)
    u, eps = per_sample_draws(_view(), keys, 202, (2, 3))
    for a, b in ((0, 1), (2, 3), (4, 5)):
        assert u[a] == u[b] and torch.equal(eps[a], eps[b])
    assert u[0] != u[2] and not torch.equal(eps[0], eps[4])
    u2, eps2 = per_sample_draws(_view(), keys[2:4], 202, (2, 3))  # a micro-batch holding only group 9
    assert torch.equal(u2, u[2:4]) and torch.equal(eps2, eps[2:4])
    u3, _ = per_sample_draws(_view(iteration=4), keys, 202, (2, 3))
    assert not torch.equal(u3, u)  # fresh draws each iteration
    # DMD2 itself keys on the sample seeds: no sharing
    from genalign.algorithms.dmd2 import DMD2

    ud, _ = per_sample_draws(_view(), DMD2().dm_keys(ro), 202, (2, 3))
    assert ud[0] != ud[1]


def test_group_normalised_dm_reward_cancels_group_offsets_and_scales():
    # two groups of two; x0 = 0, so R_dm = mean(fake²) − mean(real²) per sample
    x0 = torch.zeros(4, 2)
    fake = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    real = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    r = dm_reward(fake, real, x0)
    torch.testing.assert_close(r, torch.tensor([1.0, 2.0, 3.5, 0.0]))
    gid = torch.tensor([0, 0, 1, 1])
    adv = group_normalise(r, gid, delta=1e-6)
    # group 0: mean 1.5, std 0.5 → (−1, 1); group 1: mean 1.75, std 1.75 → (1, −1)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 1.0, -1.0]), atol=1e-5, rtol=0)
    shifted = r * torch.tensor([3.0, 3.0, 0.5, 0.5]) + torch.tensor([10.0, 10.0, -4.0, -4.0])  # w(t), c(t) per group
    torch.testing.assert_close(group_normalise(shifted, gid, delta=1e-6), adv, atol=1e-5, rtol=0)


def test_gndm_bad_options():
    from genalign.algorithms.gndm import GNDM

    with pytest.raises(ConfigError, match="estimator"):
        GNDM(estimator="reinforce")
    with pytest.raises(ConfigError, match="gndmr_weights"):
        GNDM(gndmr_weights="magic")


@pytest.mark.parametrize("family,estimator,rewards", [
    ("sd3", "policy_gradient", [{"name": "tests.algorithms.trainer_utils:Brightness"}]),  # GNDMR with a reward
    ("sd", "pathwise", []),
])
def test_gndm_trains_student_and_fake_score(tmp_path, family, estimator, rewards):
    alg = {"name": "gndm", "estimator": estimator, "fake_updates_per_generator": 2, "real_guidance": 2.0,
           "reweight_scale": 0.5, "gndmr_weights": "inverse_std"}
    cfg = make_config(tmp_path, alg, rewards=rewards, family=family, iterations=2)
    cfg.sampler.num_steps = cfg.sampler.eval_num_steps = 3 if estimator == "policy_gradient" else 1
    cfg.sampler.guidance_scale = 1.0
    cfg.sampler.kernel = ("cps" if estimator == "policy_gradient" else "ode") if family == "sd3" else "ddim"
    tr = trainer_for(cfg)
    before, fake0 = snapshot(tr), [p.detach().clone() for p in tr.parts["fake_score"].params]
    tr.train()
    assert changed(tr, before) == len(before)
    assert all(not torch.equal(a, b) for a, b in zip(fake0, tr.parts["fake_score"].params))
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    if estimator == "policy_gradient":
        assert rows[1]["r_dm"] == rows[1]["r_dm"] and "clipfrac" in rows[1]
        assert tr.algorithm.mixer.num_rewards == 2 and int(tr.algorithm.mixer.count) == 1
    else:
        assert rows[1]["dm_loss"] > 0
    bad = make_config(tmp_path / "b", {**alg, "estimator": "policy_gradient"}, rewards=[], family=family)
    bad.sampler.num_steps = 1
    with pytest.raises(ConfigError, match="num_steps"):
        trainer_for(bad)
