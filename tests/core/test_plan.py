"""Which timesteps are trained (METHODS.md §3.4) and how a global batch is planned."""

import torch

from genalign.config import build_config
from genalign.core import planning


class _Planner:
    """The planning functions bound to one config (what the trainer calls each iteration)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.records = [{"prompt": p} for p in ("a", "b", "c")]

    def train_steps_for(self, seeds, mask):
        return planning.train_steps_for(self.cfg.sampler, seeds, mask)

    def plan(self, it):
        p = planning.plan(self.cfg, self.records, it)
        return p.prompts, p.group_ids, p.seeds, p.noise_seeds, p.window_start


def trainer(**sampler):
    raw = {"model": {"path": "x"}, "data": {"prompts": ["a", "b", "c"], "group_size": 4, "prompts_per_iteration": 2},
           "rewards": ["tests.core.rewards_for_tests:MeanBrightness"], "sampler": {"num_steps": 10, **sampler}}
    return _Planner(build_config(raw))


def test_flow_grpo_denoising_reduction_trains_steps_0_to_8():
    t = trainer(train_timesteps="all_but_last", timestep_fraction=0.99)
    ts = t.train_steps_for([1, 2], torch.ones(10, dtype=torch.bool))
    assert ts.tolist() == [list(range(9))] * 2


def test_random_subset_is_per_sample_and_reproducible():
    t = trainer(train_timesteps="random_subset", timestep_fraction=0.6)
    a = t.train_steps_for([11, 12, 13], torch.ones(10, dtype=torch.bool))
    b = t.train_steps_for([11, 12, 13], torch.ones(10, dtype=torch.bool))
    assert a.shape == (3, 6) and torch.equal(a, b)
    assert not torch.equal(a[0].sort().values, a[1].sort().values) or not torch.equal(a[1].sort().values, a[2].sort().values)
    # deterministic steps (e.g. CPS's last step) are never trained
    mask = torch.ones(10, dtype=torch.bool)
    mask[-1] = False
    assert (t.train_steps_for([5], mask) != 9).all()


def test_window_is_in_the_first_half_and_plan_is_deterministic():
    t = trainer(train_timesteps="window", window_size=2, window_range=0.5)
    starts = set()
    for it in range(30):
        p1 = t.plan(it)
        p2 = t.plan(it)
        assert p1[0] == p2[0] and p1[2] == p2[2] and p1[4] == p2[4]
        starts.add(p1[4])
    assert starts <= {0, 1, 2, 3} and len(starts) > 1  # window of 2 inside [0, 5)
    prompts, groups, seeds, noise_seeds, _ = t.plan(0)
    assert len(prompts) == 8 and groups.tolist() == [0] * 4 + [1] * 4
    assert len(set(seeds)) == 8 and noise_seeds == seeds


def test_shared_initial_noise_per_group():
    t = trainer(same_initial_noise=True)
    _, groups, seeds, noise_seeds, _ = t.plan(3)
    assert len(set(noise_seeds[:4])) == 1 and noise_seeds[0] != noise_seeds[4]
    assert len(set(seeds)) == 8  # SDE noise still differs
