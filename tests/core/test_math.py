"""GRPO math pinned against hand-computed values."""

import math

import torch

from genalign.algorithms.advantages import aggregate_rewards, combined_advantages, group_advantages
from genalign.algorithms.grpo import best_of_n_mask, mean_kl, ppo_clip_loss


def test_group_advantages_group_std_by_hand():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    adv, st = group_advantages(r, g, std="group", eps=0.0, clip=5.0)
    # group 0: mean 2, population std 1 -> [-1, 1]; group 1 zero variance -> 0; group 2: mean 2, std 2 -> [-1, 1]
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))
    assert abs(st["zero_std_ratio"] - 1 / 3) < 1e-9


def test_group_advantages_global_std_and_clip():
    r = torch.tensor([0.0, 2.0, 100.0, 102.0])
    g = torch.tensor([0, 0, 1, 1])
    adv, _ = group_advantages(r, g, std="global", eps=0.0, clip=5.0)
    s = float(torch.tensor([0.0, 2.0, 100.0, 102.0]).std(unbiased=False))  # 50.01
    assert torch.allclose(adv, torch.tensor([-1 / s, 1 / s, -1 / s, 1 / s]), atol=1e-6)
    adv, _ = group_advantages(torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), std="group",
                              eps=0.0, clip=1.0)
    assert float(adv.max()) == 1.0  # (1 - .25)/0.433 = 1.73 clipped to 1


def test_nan_rewards_are_not_applicable():
    per = torch.tensor([[1.0, float("nan")], [2.0, 5.0], [float("nan"), float("nan")]])
    comb = aggregate_rewards(per, [1.0, 2.0])
    assert comb[0] == 1.0 and comb[1] == 12.0 and math.isnan(comb[2])
    adv, _ = combined_advantages(per, [1.0, 1.0], torch.tensor([0, 0, 0]), mode="normalize_then_sum", eps=0.0)
    # reward 0: group [1, 2] -> [-1, 1]; reward 1: only one valid -> 0
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0]))


def test_group_std_metric_by_hand():
    # aggregated 2·r0 + 0·r1: groups {2, 6} (std 2), {4, 4} (std 0), {10, NaN} (one finite value: left out)
    per = torch.tensor([[1.0, 9.0], [3.0, 0.0], [2.0, 1.0], [2.0, 5.0], [5.0, 0.0], [float("nan"), float("nan")]])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    for mode in ("sum_then_normalize", "normalize_then_sum"):
        _, st = combined_advantages(per, [2.0, 0.0], groups, mode=mode)
        assert math.isclose(st["group_std"], (2.0 + 0.0) / 2), mode
    _, st = combined_advantages(per[:, :1], [1.0], groups, mode="sum_then_normalize", unbiased=True)
    assert math.isclose(st["group_std"], (math.sqrt(2) + 0.0) / 2)


def test_ppo_clip_by_hand():
    ratio = torch.tensor([1.5, 0.5, 1.05, 0.95])
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    out = ppo_clip_loss(ratio, adv, 0.1, 0.1)
    # A>0, r=1.5: max(-1.5, -1.1) = -1.1 ; A>0, r=.5: max(-.5, -.9) = -.5
    # A<0, r=1.05: max(2.1, 2.1) = 2.1 ; A<0, r=.95: max(1.9, 1.9) = 1.9
    assert torch.allclose(out, torch.tensor([-1.1, -0.5, 2.1, 1.9]))


def test_kl_forms_by_hand():
    mu = torch.tensor([[1.0, 2.0]])
    ref = torch.tensor([[0.0, 0.0]])
    std = torch.tensor([0.5])
    dt = torch.tensor([0.1])
    # mean_d δ² = 2.5 ; exact = 2.5 / (2·0.25) = 5 ; flow_grpo = 5 × 0.1
    assert torch.allclose(mean_kl(mu, ref, std, dt, "exact"), torch.tensor([5.0]))
    assert torch.allclose(mean_kl(mu, ref, std, dt, "flow_grpo"), torch.tensor([0.5]))


def test_best_of_n():
    adv = torch.tensor([0.1, 0.5, -0.3, 0.9, -1.0, 0.0])
    keep = best_of_n_mask(adv, torch.zeros(6, dtype=torch.long), 2)
    assert keep.tolist() == [False, False, False, True, True, False]
