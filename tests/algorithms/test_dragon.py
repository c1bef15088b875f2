"""DRAGON surrogates (METHODS.md §6): Diffusion-DPO / KTO values and gradient signs, set construction."""

import math

import pytest
import torch

from genalign.algorithms.dragon import (
    diffusion_dpo_loss,
    diffusion_kto_loss,
    leave_one_out_contributions,
    make_pairs,
    prediction_error,
    split_by_contribution,
    split_instance,
)
from genalign.errors import ConfigError


def test_prediction_error_hand_computed():
    pred = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])
    torch.testing.assert_close(prediction_error(pred, target), torch.tensor([2.5, 1.0]))
    assert prediction_error(pred.half(), target).dtype == torch.float32


def test_dpo_hand_computed():
    # Δw = 0.10 − 0.12 = −0.02, Δl = 0.20 − 0.19 = 0.01; logit = −½·100·(−0.03) = 1.5
    # loss = −log σ(1.5) = log(1 + e^−1.5) = 0.2014133
    loss, st = diffusion_dpo_loss(
        torch.tensor([0.10]), torch.tensor([0.12]), torch.tensor([0.20]), torch.tensor([0.19]), beta=100.0
    )
    assert loss.item() == pytest.approx(0.2014133, abs=1e-6)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-6)
    assert st["reward_margin"].item() == pytest.approx(1.5, rel=1e-5)
    assert st["implicit_acc"].item() == 1.0
    # two pairs, the second one wrong-way: logit = −½·100·(0.02) = −1 → loss log(1 + e) = 1.3132617
    loss, st = diffusion_dpo_loss(
        torch.tensor([0.10, 0.12]), torch.tensor([0.12, 0.10]), torch.tensor([0.20, 0.1]), torch.tensor([0.19, 0.1]),
        beta=100.0,
    )
    assert loss.item() == pytest.approx((0.2014133 + 1.3132617) / 2, abs=1e-6)
    assert st["implicit_acc"].item() == 0.5
    with pytest.raises(ConfigError):
        diffusion_dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.0)


def test_dpo_gradient_signs():
    ew = torch.tensor([0.3, 0.5], requires_grad=True)
    el = torch.tensor([0.4, 0.2], requires_grad=True)
    ref_w = torch.tensor([0.3, 0.5], requires_grad=True)
    loss, _ = diffusion_dpo_loss(ew, ref_w, el, torch.tensor([0.4, 0.2]), beta=50.0)
    loss.backward()
    assert (ew.grad > 0).all()  # descent lowers the winner's error
    assert (el.grad < 0).all()  # and raises the loser's
    assert ref_w.grad is None or (ref_w.grad == 0).all()  # the reference is stop-gradient


def test_dpo_step_on_tiny_denoiser_prefers_winner():
    torch.manual_seed(0)
    d = 6
    model = torch.nn.Linear(d, d)
    ref = torch.nn.Linear(d, d)
    ref.load_state_dict(model.state_dict())
    x_w, x_l = torch.randn(4, d), torch.randn(4, d)
    eps = torch.randn(4, d)  # shared noise for each pair
    a, s = 0.8, 0.6
    xt_w, xt_l = a * x_w + s * eps, a * x_l + s * eps

    def errs():
        return prediction_error(model(xt_w), eps), prediction_error(model(xt_l), eps)

    with torch.no_grad():
        rw, rl = prediction_error(ref(xt_w), eps), prediction_error(ref(xt_l), eps)
        bw, bl = errs()
    ew, el = errs()
    loss, st = diffusion_dpo_loss(ew, rw, el, rl, beta=10.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # θ = ref → logit 0
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
        aw, al = errs()
    assert ((aw - al) - (bw - bl)).mean() < 0


def test_kto_hand_computed():
    # g = −(err_θ − err_ref) = [0.1, −0.1]; mean 0 → z0 = 0; β = 10: u = [1, 1]; 1 − σ(1) = 0.2689414
    et, er = torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.2])
    pos = torch.tensor([True, False])
    loss, st = diffusion_kto_loss(et, er, pos, beta=10.0)
    assert loss.item() == pytest.approx(0.2689414, abs=1e-6)
    assert st["z0"].item() == pytest.approx(0.0, abs=1e-7)
    # λ_pos = 2: mean(2·0.2689414, 0.2689414) = 0.4034121
    loss, _ = diffusion_kto_loss(et, er, pos, beta=10.0, lambda_pos=2.0)
    assert loss.item() == pytest.approx(0.4034121, abs=1e-6)
    # g = [0.2, 0.1], z0 = 0.15; u = [10·0.05, −10·(−0.05)] = [0.5, 0.5]; 1 − σ(0.5) = 0.3775407
    loss, st = diffusion_kto_loss(torch.tensor([0.1, 0.1]), torch.tensor([0.3, 0.2]), pos, beta=10.0)
    assert loss.item() == pytest.approx(0.3775407, abs=1e-6)
    assert st["z0"].item() == pytest.approx(0.15, rel=1e-5)
    # all-reduce: another rank contributes Σg = −1 over 2 samples → global mean (0.3 − 1)/4 < 0 → z0 = 0;
    # u = [2, −1]: mean(1 − σ(2), 1 − σ(−1)) = mean(0.1192029, 0.7310586) = 0.4251307
    seen = []

    def hook(t):
        seen.append(t.clone())
        return t + torch.tensor([-1.0, 2.0], dtype=t.dtype)

    loss, st = diffusion_kto_loss(torch.tensor([0.1, 0.1]), torch.tensor([0.3, 0.2]), pos, beta=10.0, all_reduce=hook)
    assert loss.item() == pytest.approx(0.4251307, abs=1e-6)
    assert st["z0"].item() == 0.0
    assert len(seen) == 1 and seen[0][1].item() == 2.0


def test_kto_gradient_signs_and_stop_gradient_reference_point():
    et = torch.tensor([0.2, 0.25, 0.3, 0.1], requires_grad=True)
    er = torch.tensor([0.21, 0.2, 0.3, 0.15])
    pos = torch.tensor([1, 1, 0, 0])
    loss, _ = diffusion_kto_loss(et, er, pos, beta=20.0)
    loss.backward()
    assert (et.grad[:2] > 0).all()  # descent lowers the error on D⁺
    assert (et.grad[2:] < 0).all()  # and raises it on D⁻
    # z0 is stop-gradient: the gradient of sample i depends only on its own u_i
    u0 = 20.0 * (-(0.2 - 0.21) - max(0.0, (0.01 - 0.05 + 0.0 + 0.05) / 4))
    s0 = 1 / (1 + math.exp(-u0))
    assert et.grad[0].item() == pytest.approx(20.0 * s0 * (1 - s0) / 4, rel=1e-4)


def test_split_instance_median_per_group():
    scores = torch.tensor([1.0, 5.0, 3.0, 2.0, 10.0, 10.0, 10.0, 10.0, 4.0, 7.0, 6.0])
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 3
    pos, neg = split_instance(scores, groups)
    # a: median 2.5 → pos {1, 2}, neg {0, 3}; b: zero variance → nothing; c: median 6 → pos {9}, neg {8}
    assert pos.tolist() == [1, 2, 9]
    assert neg.tolist() == [0, 3, 8]
    # batch-wide (no groups) with a NaN ignored
    s = torch.tensor([0.0, float("nan"), 2.0, 1.0, 3.0])
    pos, neg = split_instance(s)
    assert pos.tolist() == [2, 4] and neg.tolist() == [0, 3]


def test_split_instance_quantile():
    scores = torch.tensor([3.0, 7.0, 0.0, 5.0, 1.0, 6.0, 2.0, 4.0])
    pos, neg = split_instance(scores, mode="quantile", q=0.25)  # k = 2
    assert pos.tolist() == [1, 5] and neg.tolist() == [2, 4]
    pos, neg = split_instance(torch.ones(4), mode="quantile", q=0.5)
    assert pos.numel() == 0 and neg.numel() == 0
    # group ids as a tensor
    pos, neg = split_instance(torch.tensor([1.0, 2.0, 9.0, 8.0]), torch.tensor([0, 0, 1, 1]), mode="quantile", q=0.5)
    assert pos.tolist() == [1, 2] and neg.tolist() == [0, 3]
    with pytest.raises(ConfigError, match="median"):
        split_instance(scores, mode="top")
    with pytest.raises(ConfigError):
        split_instance(scores, mode="quantile", q=0.7)


def test_leave_one_out_contributions():
    v = torch.tensor([1.0, -2.0, 4.0])
    c = leave_one_out_contributions(lambda idx: v[idx].sum().item(), 3)
    torch.testing.assert_close(c, v.double())
    # mean: R(all) = 1; R without 0 = 1, without 1 = 2.5, without 2 = −0.5 → c = [0, −1.5, 1.5]
    c = leave_one_out_contributions(lambda idx: v[idx].mean().item(), 3)
    torch.testing.assert_close(c, torch.tensor([0.0, -1.5, 1.5], dtype=torch.float64))


def test_split_by_contribution_greedy_verification():
    c = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    quality = torch.tensor([10.0, -5.0, -5.0, 5.0, 5.0, -10.0])

    def set_value(idx):
        return quality[idx].mean().item()

    # the median split {0,1,2} vs {3,4,5} ties (0 vs 0); shrinking to {0,1} vs {4,5} gives 2.5 > −2.5
    pos, neg = split_by_contribution(c, set_value)
    assert pos.tolist() == [0, 1] and neg.tolist() == [4, 5]
    assert set_value(pos) > set_value(neg)
    # without verification: the plain median split
    pos, neg = split_by_contribution(c)
    assert pos.tolist() == [0, 1, 2] and neg.tolist() == [3, 4, 5]
    # a set reward that always disagrees: strict → empty, else the last attempt (size 1)
    anti = lambda idx: -c[idx].mean().item()  # noqa: E731
    pos, neg = split_by_contribution(c, anti)
    assert pos.numel() == 0 and neg.numel() == 0
    pos, neg = split_by_contribution(c, anti, strict=False)
    assert pos.tolist() == [0] and neg.tolist() == [5]


def test_make_pairs_within_group_first():
    groups = ["a", "a", "a", "b", "b", "c"]
    w, l = make_pairs(torch.tensor([0, 1, 4]), torch.tensor([2, 3, 5]), groups)
    assert list(zip(w.tolist(), l.tolist())) == [(0, 2), (4, 3), (1, 5)]
    w, l = make_pairs(torch.tensor([0, 1, 4]), torch.tensor([2, 3, 5]), groups, cross_group=False)
    assert list(zip(w.tolist(), l.tolist())) == [(0, 2), (4, 3)]
    w, l = make_pairs(torch.tensor([0, 1]), torch.tensor([2]))
    assert w.tolist() == [0] and l.tolist() == [2]
    # pairs from a per-group split are all within a prompt
    scores = torch.tensor([1.0, 4.0, 2.0, 3.0, 8.0, 5.0, 7.0, 6.0])
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pos, neg = split_instance(scores, gid)
    w, l = make_pairs(pos, neg, gid)
    assert len(w) == 4 and (gid[w] == gid[l]).all() and (scores[w] > scores[l]).all()
