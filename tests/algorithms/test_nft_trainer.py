"""DiffusionNFT wired into the trainer (METHODS.md §4) on tiny rectified-flow and ε-prediction pipelines."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.algorithms.conversions import flow_interpolate
from genalign.algorithms.nft import NFT, nft_optimality, old_policy_decay, training_point
from genalign.config import make_algorithm
from genalign.core.phases import Batch
from genalign.errors import ConfigError

from .trainer_utils import changed, make_config, snapshot, trainer_for


def test_nft_run_changes_every_trainable_parameter_and_checkpoints_old_policy(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft", "decay_type": 1, "ref_weight": 1e-2})
    tr = trainer_for(cfg)
    before = snapshot(tr)
    summary = tr.train()
    assert changed(tr, before) == len(before)
    rows = [json.loads(l) for l in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert [r["nft/old_decay"] for r in rows] == pytest.approx([old_policy_decay(1, 1), old_policy_decay(2, 1)])
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)
    extra = load_file(os.path.join(summary["checkpoint"], "extra_state.safetensors"))
    olds = [k for k in extra if k.startswith("algorithm.old.")]
    assert len(olds) == len(before)
    # θ_old is the EMA: after step 1 (d = 0.001) it is ≈ θ_1, and after step 2 it moved towards θ_2 but ≠ θ_2
    params = tr.generator.trainable_parameters()
    assert any(not torch.equal(extra[f"algorithm.old.{i}"], params[i].detach()) for i in range(len(params)))
    # the run's parameters are θ (not θ_old) after the checkpoint was written
    assert tr.algorithm._backup is None


def test_nft_gradient_is_zero_at_theta_old_with_equal_rewards(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft", "ref_weight": 1e-2},
                      rewards=[{"name": "tests.algorithms.trainer_utils:Constant"}])
    tr = trainer_for(cfg)
    ro = tr.do_rollout(0)
    per_reward, groups, prompts = tr.score(ro)
    adv, _, _ = tr.algorithm.advantages(per_reward, [1.0], groups, prompts, cfg.reward_aggregation)
    assert torch.count_nonzero(adv) == 0  # all-equal rewards -> A = 0 -> r = 1/2
    params = tr.generator.trainable_parameters()

    def grad_norm(a):
        for p in params:
            p.grad = None
        for loss, _ in tr.algorithm.losses(tr.view, Batch(0, rollout=ro, adv=a), list(range(len(ro)))):
            loss.backward()
        return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))

    g0 = grad_norm(adv)
    g1 = grad_norm(torch.linspace(-2, 2, len(ro)))  # the same batch with a real signal
    assert g1 > 1e-4
    assert g0 < 1e-6 * max(1.0, float(g1))


def test_rollouts_are_sampled_by_the_old_policy(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft", "decay_type": 2, "ref_weight": 0.0})
    tr = trainer_for(cfg)
    alg = tr.algorithm
    params = tr.generator.trainable_parameters()
    with torch.no_grad():  # make θ differ from θ_old
        for p in params:
            p.add_(0.05)
    tr.parts["policy"].steps = 1
    theta = snapshot(tr)
    # θ_old is swapped in by the algorithm's sampling_policy around the trainer's rollout ...
    ro_old = tr.do_rollout(0)
    tr.algorithm.advantages(torch.zeros(len(ro_old), 1), [1.0], ro_old.group_ids, ro_old.prompts, "sum_then_normalize")
    assert all(torch.equal(p.detach(), t) for p, t in zip(params, theta))  # ... and θ is back before the update
    with alg.old_policy(tr.view):
        ro_ctx = tr.generator.rollout(ro_old.prompts, ro_old.seeds, cfg.sampler, stochastic=False, guidance_scale=1.0)
    ro_new = tr.generator.rollout(ro_old.prompts, ro_old.seeds, cfg.sampler, stochastic=False, guidance_scale=1.0)
    torch.testing.assert_close(ro_old.states[:, -1], ro_ctx.states[:, -1])
    assert not torch.allclose(ro_old.states[:, -1], ro_new.states[:, -1])
    assert torch.isnan(ro_old.log_probs).all() and ro_old.guidance_scale == 1.0  # deterministic, CFG-free
    # inside the sampling policy the parameters hold θ_old
    with alg.sampling_policy(tr.view):
        assert all(torch.equal(p.detach(), o.to(p.dtype)) for p, o in zip(params, alg._old))
    assert all(torch.equal(p.detach(), t) for p, t in zip(params, theta))


def test_old_policy_update_and_state_roundtrip(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft", "decay_type": 1, "ref_weight": 0.0})
    tr = trainer_for(cfg)
    alg = tr.algorithm
    params = tr.generator.trainable_parameters()
    old0 = [o.clone() for o in alg._old]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    tr.parts["policy"].steps = 100  # d = min(0.001·100, 0.5) = 0.1
    st = alg.after_iteration(tr.view)
    assert st["nft/old_decay"] == pytest.approx(0.1)
    for o, o0, p in zip(alg._old, old0, params):
        torch.testing.assert_close(o, 0.1 * o0 + 0.9 * p.detach().float())
    sd = alg.state_dict()
    other = make_algorithm(NFT, {"decay_type": 1, "ref_weight": 0.0})
    other.setup(tr.view)
    other.after_parts(tr.view)
    other.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(other._old, alg._old))
    with pytest.raises(Exception, match="old-policy state has"):
        other.load_state_dict({"old.0": sd["old.0"]})


def test_training_point_is_per_sample_deterministic_and_matches_the_interpolation(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft"})
    tr = trainer_for(cfg)
    gen = tr.generator
    sch = gen.schedule(4)
    x0 = torch.randn(4, *gen.latent_shape())
    seeds = [11, 12, 13, 14]
    a = training_point(gen, sch, x0, seeds, unit=1)
    b = training_point(gen, sch, x0[2:], seeds[2:], unit=1)  # a different batch split
    torch.testing.assert_close(a.x_t[2:], b.x_t)
    torch.testing.assert_close(a.x_t, flow_interpolate(x0, a.noise, a.time))
    assert set(a.time.tolist()) <= set(sch.sigmas[:4].tolist())
    torch.testing.assert_close(a.t_model, a.time * 1000)
    # units of one sample visit distinct schedule steps
    ts = [float(training_point(gen, sch, x0[:1], seeds[:1], unit=u).time) for u in range(4)]
    assert len(set(ts)) == 4
    u = training_point(gen, sch, x0, seeds, unit=0, sampling="uniform", t_min=0.2, t_max=0.3)
    assert ((u.time >= 0.2) & (u.time <= 0.3)).all()


def test_nft_on_an_eps_prediction_model_changes_parameters(tmp_path):
    cfg = make_config(tmp_path, {"name": "nft", "ref_weight": 1e-2, "kl_space": "native"}, family="sd",
                      iterations=1)
    tr = trainer_for(cfg)
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)


def test_nft_losses_use_optimality_of_advantages():
    r = nft_optimality(torch.tensor([-5.0, 0.0, 2.5]), 5.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.5, 0.75]))


@pytest.mark.parametrize("args", [{"beta": 0}, {"decay_type": 3}, {"timestep_sampling": "cosine"},
                                  {"adv_std": "buffer"}, {"t_min": 0.5, "t_max": 0.4}, {"kl_space": "x"},
                                  {"unknown_key": 1}])
def test_nft_config_errors(args):
    with pytest.raises(ConfigError) as e:
        make_algorithm(NFT, args)
    assert "\n" not in str(e.value)
