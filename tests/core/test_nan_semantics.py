"""NaN rewards per sample (the reward protocol: NaN = "not applicable to this sample"): such a sample leaves its
group's statistics and the loss, the rest of the batch trains, the counts are logged; a run in which no update
ever happened exits non-zero with one line saying why. ±inf stays an error that skips the iteration."""

import json
import math
import os

import torch

from genalign.algorithms.advantages import PerPromptStatTracker, group_advantages
from genalign.cli import main
from genalign.config import build_config
from genalign.trainer import Trainer

from .helpers import tiny_config, write_config

HALF = "tests.core.rewards_for_tests:HalfNaN"


def test_group_advantages_ignore_nan_samples_hand_computed():
    r = torch.tensor([1.0, float("nan"), 3.0, float("nan"), 5.0, 5.0, float("nan"), 2.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv, st = group_advantages(r, g, eps=0.0, clip=10.0)
    # group 0: valid {1, 3}: mean 2, population std 1 -> (-1, +1); group 1: valid {5, 5, 2}: mean 4, std sqrt(2)
    s1 = math.sqrt(((5 - 4) ** 2 * 2 + (2 - 4) ** 2) / 3)
    want = [-1.0, 0.0, 1.0, 0.0, 1 / s1, 1 / s1, 0.0, -2 / s1]
    assert torch.allclose(adv, torch.tensor(want), atol=1e-6)
    assert st["zero_std_ratio"] == 0.0


def test_per_prompt_tracker_skips_nan():
    t = PerPromptStatTracker(buffer_size=8, min_count=1)
    adv = t.update(["a", "a", "a"], torch.tensor([1.0, float("nan"), 3.0]), eps=0.0)
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0]))
    assert list(t.buffers["a"]) == [1.0, 3.0]


def record_updates(t):
    """Wrap the algorithm's losses: the sample indices (sorted) and the advantages each update is given."""
    seen, advs = [], []
    losses = t.algorithm.losses

    def spy(view, batch, items):
        seen.append(sorted(items))
        advs.append(batch.adv.clone())
        return losses(view, batch, items)

    t.algorithm.losses = spy
    return seen, advs


def test_half_nan_rewards_train_on_the_other_half(tiny_sd3, tmp_path):
    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"), train__train_batch_size=8)
    cfg["rewards"] = [{"name": HALF}]
    t = Trainer(build_config(cfg))
    t.setup()
    seen, advs = record_updates(t)
    before = [p.detach().clone() for p in t.generator.trainable_parameters()]
    t.train()
    assert t.optimizer_step == 2 and t.counters["skipped_nonfinite_reward"] == 0
    assert any(not torch.equal(p.detach(), b) for p, b in zip(t.generator.trainable_parameters(), before))
    assert seen and all(sorted(items) == [0, 2, 4, 6] for items in seen)  # the NaN samples are out of the loss
    for a in advs:
        assert torch.all(a[1::2] == 0) and torch.any(a[0::2] != 0)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["nan_reward_samples"] for r in rows] == [4, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward_mean"]) for r in rows)


def test_a_run_without_any_update_exits_non_zero(tiny_sd3, tmp_path, capsys):
    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"))
    cfg["rewards"] = [{"name": "tests.core.rewards_for_tests:NaNReward"}]
    code = main(["train", write_config(tmp_path / "c.yaml", cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no update happened in 2 iterations: 2 skipped for NaN/inf rewards" in err[0]
    ok = tiny_config(tiny_sd3, str(tmp_path / "ok"))
    ok["rewards"] = [{"name": HALF}]
    assert main(["train", write_config(tmp_path / "ok.yaml", ok)]) == 0
    assert os.path.exists(tmp_path / "ok" / "summary.json")


def test_best_of_n_leaves_the_unkept_samples_out_of_the_update(tiny_sd3, tmp_path):
    """DanceGRPO's best-of-n trains on the top n/2 and bottom n/2 of each group only (METHODS §3): the others are
    not computed at all — neither their clipped loss nor their KL — rather than computed with advantage 0."""
    cfg = tiny_config(tiny_sd3, str(tmp_path / "run"), train__train_batch_size=8)
    cfg["algorithm"]["best_of_n"] = 2
    t = Trainer(build_config(cfg))
    t.setup()
    seen, advs = record_updates(t)
    before = [p.detach().clone() for p in t.generator.trainable_parameters()]
    t.train()
    assert t.optimizer_step == 2
    assert any(not torch.equal(p.detach(), b) for p, b in zip(t.generator.trainable_parameters(), before))
    assert len(seen) == 2
    for items, adv in zip(seen, advs):
        kept = [i for i in range(len(adv)) if adv[i] != 0]
        assert items == kept and len(kept) == 4  # 2 groups of 4: the highest and the lowest of each
