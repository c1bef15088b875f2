"""Parts and phases: a second trained network with its own optimiser and a 3:1 update ratio, a learnable reward,
checkpoint/resume of every part bit-identically, and a run without rewards."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.config import build_config
from genalign.core.phases import Phase
from genalign.errors import ConfigError
from tests.algorithms.trainer_utils import changed, make_config, snapshot, trainer_for

TWO_PART = {"name": "tests.core.parts_for_tests:TwoPart"}
LEARNED = [{"name": "tests.core.parts_for_tests:LearnedBrightness"}]


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_two_part_algorithm_without_rewards_trains_both_parts_at_its_ratio(tmp_path, capsys):
    cfg = make_config(tmp_path, TWO_PART, rewards=[], iterations=2)
    tr = trainer_for(cfg)
    before, critic0 = snapshot(tr), _params(tr.parts["critic"].raw)
    summary = tr.train()
    assert changed(tr, before) == len(before)  # the policy trained on a rewardless objective
    assert all(not torch.equal(a, b) for a, b in zip(critic0, tr.parts["critic"].raw.parameters()))
    assert tr.parts["critic"].steps == 3 * tr.parts["policy"].steps == 6  # the 3:1 update ratio
    # the part's own optimiser settings (declared defaults) are used
    group = tr.parts["critic"].optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(5e-2) and tuple(group["betas"]) == (0.5, 0.9)
    rows = [json.loads(l) for l in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert all(r["critic/critic_loss"] == r["critic/critic_loss"] for r in rows)
    assert all(r["denoise_loss"] > 0 for r in rows)
    assert "trained without rewards" in capsys.readouterr().out
    assert os.path.exists(os.path.join(summary["checkpoint"], "parts", "critic.safetensors"))


def test_part_options_come_from_the_config(tmp_path):
    cfg = make_config(tmp_path, TWO_PART, rewards=[], iterations=1, parts={"critic": {"learning_rate": 1e-3}})
    tr = trainer_for(cfg)
    assert tr.parts["critic"].optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    bad = make_config(tmp_path / "b", TWO_PART, rewards=[], iterations=1, parts={"critc": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match="unknown part"):
        trainer_for(bad)


def test_learnable_reward_trains_only_in_its_phase_and_scores_without_gradients(tmp_path):
    cfg = make_config(tmp_path, {"name": "grpo", "clip_range": 1e-2}, rewards=LEARNED, iterations=2)
    tr = trainer_for(cfg)
    reward = tr.rewards[0]
    head0, before = _params(reward.head), snapshot(tr)
    assert [ph.parts for ph, _ in tr.phases_for(0)] == [("head",), ("policy",)]
    tr.train()
    assert all(not torch.equal(a, b) for a, b in zip(head0, reward.head.parameters()))
    assert changed(tr, before) == len(before)
    assert reward.trained_microbatches == 4 and tr.parts["head"].steps == 2  # 2 micro-batches a step
    out = reward(torch.rand(2, 3, 4, 4), ["a", "b"])
    assert not out.requires_grad


def test_exclusive_phase_runs_alone():
    class Owner:
        def phases(self, it):
            return [Phase(("d",), needs={"rollout"}, exclusive=it % 2 == 0)]

    from genalign.trainer import Trainer

    t = Trainer.__new__(Trainer)
    t.rewards = [type("R", (), {"learnable": True, "phases": Owner().phases})()]
    t.algorithm = type("A", (), {"phases": lambda self, it: [Phase(("policy",))]})()
    assert [ph.parts for ph, _ in t.phases_for(0)] == [("d",)]
    assert [ph.parts for ph, _ in t.phases_for(1)] == [("d",), ("policy",)]


def _state(run):
    from genalign.core.checkpoint import latest_checkpoint

    ck = latest_checkpoint(run)
    out = {f"lora.{k}": v for k, v in load_file(os.path.join(ck, "pytorch_lora_weights.safetensors")).items()}
    for name in ("critic", "head"):
        out.update({f"{name}.{k}": v for k, v in load_file(os.path.join(ck, "parts", f"{name}.safetensors")).items()})
    out.update({f"extra.{k}": v for k, v in load_file(os.path.join(ck, "extra_state.safetensors")).items()})
    return ck, out


def test_every_part_round_trips_through_checkpoint_and_resume_bit_identically(tmp_path):
    def cfg_for(run, iterations, **over):
        c = make_config(tmp_path / run, TWO_PART, rewards=LEARNED, iterations=iterations, save_every=2,
                        optimizer_steps_per_iteration=2, parts={"critic": {"ema_decay": 0.5}})
        for k, v in over.items():
            setattr(c.run, k, v)
        return c

    trainer_for(cfg_for("full", 4)).train()
    trainer_for(cfg_for("resumed", 2)).train()
    resumed_cfg = cfg_for("resumed", 4, resume=True)
    resumed_cfg.run.output_dir = str(tmp_path / "resumed" / "run")
    tr = trainer_for(resumed_cfg)
    assert tr.iteration == 2 and tr.parts["critic"].steps == 2 * 3 * 2
    tr.train()
    ck_a, a = _state(str(tmp_path / "full" / "run"))
    ck_b, b = _state(str(tmp_path / "resumed" / "run"))
    assert sorted(a) == sorted(b) and any(k.startswith("extra.ema@critic.") for k in a)
    assert any(k.startswith("extra.reward@") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.load(open(os.path.join(ck_a, "trainer_state.json")))
    sb = json.load(open(os.path.join(ck_b, "trainer_state.json")))
    assert sa["part_steps"] == sb["part_steps"] == {"policy": 8, "critic": 24, "head": 8}


def test_a_run_without_rewards_needs_an_algorithm_that_trains_without_them(tmp_path):
    raw = {"model": {"path": "x"}, "data": {"prompts": ["a"]}, "algorithm": {"name": "grpo"}, "rewards": []}
    with pytest.raises(ConfigError, match="'rewards' is empty"):
        build_config(raw)
    build_config({**raw, "algorithm": TWO_PART})  # valid: TwoPart trains without rewards


def test_jsonl_prompt_fields_reach_the_rewards_through_the_rollout(tmp_path):
    from tests.core.parts_for_tests import RecordsMetadata

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red cube", "colour": "red", "ref": 1}\n'
                       '{"prompt": "a blue ball", "colour": "blue", "ref": 2}\n')
    cfg = make_config(tmp_path, {"name": "grpo"}, rewards=[{"name": "tests.core.parts_for_tests:RecordsMetadata"}],
                      iterations=1)
    cfg.data.prompts = str(prompts)
    tr = trainer_for(cfg)
    RecordsMetadata.seen.clear()
    ro = tr.do_rollout(0)
    assert [m["colour"] in p for p, m in zip(ro.prompts, ro.metadata)] == [True] * len(ro)
    per, _, _ = tr.score(ro)
    assert per.flatten().tolist() == [1.0] * len(ro)
    assert {m["ref"] for m in RecordsMetadata.seen} <= {1, 2} and len(RecordsMetadata.seen) == len(ro)
