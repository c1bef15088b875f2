"""train.lr_schedule: the learning rate follows the run's progress in iterations, the same for every part."""

from __future__ import annotations

import json
import math
import os
import types

import pytest

from genalign.config import load_config
from genalign.core.parts import lr_factor
from genalign.errors import ConfigError
from tests.algorithms.trainer_utils import make_config, trainer_for

TWO_PART = {"name": "tests.core.parts_for_tests:TwoPart"}


def _cfg(kind, floor=0.0, warm=0):
    return types.SimpleNamespace(train=types.SimpleNamespace(lr_schedule=kind, lr_min_ratio=floor, warmup_steps=warm))


def test_factor_matches_hand_values():
    p = [0.0]
    cos = lr_factor(_cfg("cosine", 0.1), 1, lambda: p[0])
    lin = lr_factor(_cfg("linear", 0.0), 1, lambda: p[0])
    const = lr_factor(_cfg("constant", 0.5), 1, lambda: p[0])
    assert cos(7) == pytest.approx(1.0) and lin(7) == pytest.approx(1.0)
    p[0] = 0.5
    assert cos(7) == pytest.approx(0.1 + 0.9 * 0.5)  # cos(pi/2) = 0: halfway between 1 and the floor
    assert lin(7) == pytest.approx(0.5) and const(7) == 1.0
    p[0] = 0.25
    assert cos(3) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lin(3) == pytest.approx(0.75)
    p[0] = 1.0
    assert cos(3) == pytest.approx(0.1) and lin(3) == pytest.approx(0.0)


def test_warmup_counts_optimiser_steps_whatever_the_process_count():
    # accelerate's prepared scheduler steps once per process: with 2 processes, scheduler step 4 is optimiser step 2
    one = lr_factor(_cfg("constant", warm=4), 1, lambda: 0.0)
    two = lr_factor(_cfg("constant", warm=4), 2, lambda: 0.0)
    assert one(0) == pytest.approx(0.25) and one(2) == pytest.approx(0.75) and one(9) == 1.0
    assert two(4) == pytest.approx(one(2)) and two(5) == pytest.approx(one(2))
    warm_cos = lr_factor(_cfg("cosine", warm=4), 1, lambda: 0.5)
    assert warm_cos(1) == pytest.approx(0.5 * 0.5)


def test_every_part_decays_with_the_run(tmp_path):
    cfg = make_config(tmp_path, TWO_PART, rewards=[], iterations=4, lr_schedule="linear", lr_min_ratio=0.2)
    tr = trainer_for(cfg)
    tr.train()
    rows = [json.loads(l) for l in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:]))  # falls every iteration
    # after the last iteration's steps the factor is that of progress 3/4: 1 - 0.8 * 0.75 = 0.4
    assert tr.parts["policy"].optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.4)
    assert tr.parts["critic"].optimizer.param_groups[0]["lr"] == pytest.approx(5e-2 * 0.4)  # its own rate, decayed


@pytest.mark.parametrize("item,msg", [("train.lr_schedule=cosin", "'train.lr_schedule'"),
                                      ("train.lr_min_ratio=1.5", "'train.lr_min_ratio' is 1.5")])
def test_bad_schedule_settings_are_one_line_errors(item, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        load_config("configs/toy/tones_grpo.yaml", [item])
    assert "\n" not in str(e.value)


def test_a_decaying_run_resumed_from_a_checkpoint_ends_bit_identical(tmp_path):
    import shutil

    import torch

    from tests.core.test_parts_phases import _state

    def cfg_for(run, **over):
        c = make_config(tmp_path / run, TWO_PART, rewards=[{"name": "tests.core.parts_for_tests:LearnedBrightness"}],
                        iterations=4, save_every=2, keep_checkpoints=0, lr_schedule="cosine", lr_min_ratio=0.1)
        for k, v in over.items():
            setattr(c.run, k, v)
        return c

    trainer_for(cfg_for("full")).train()
    trainer_for(cfg_for("cut")).train()
    cut = str(tmp_path / "cut" / "run")
    shutil.rmtree(os.path.join(cut, "checkpoints", "checkpoint-4"))  # as if the run had stopped after iteration 2
    resumed = cfg_for("cut", resume=True)
    resumed.run.output_dir = cut
    tr = trainer_for(resumed)
    assert tr.iteration == 2
    tr.train()
    _, a = _state(str(tmp_path / "full" / "run"))
    _, b = _state(cut)
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
