"""trl.GRPOTrainer on the shipped tiny VLM: every trainable parameter changes, both rewards are logged."""

import json
import os

import pytest
import torch

from genalign.config import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSET = os.path.join(ROOT, "assets", "gui", "tiny_vlm")


def _cfg(tmp_path, **gui):
    manifest = json.load(open(os.path.join(ASSET, "manifest.json")))
    g = {"model": ASSET, "dtype": "fp32", "bf16": False, "gradient_checkpointing": False,
         "synthetic_train_screens": 2, "min_pixels": manifest["min_pixels"], "max_pixels": manifest["max_pixels"],
         "num_generations": 4, "per_device_train_batch_size": 8, "max_steps": 2, "max_completion_length": 20,
         "learning_rate": 1e-3, "round_digits": None, "save_steps": 0, "save_model": False, "use_cpu": True}
    g.update(gui)
    return build_config({"task": "gui", "run": {"output_dir": str(tmp_path / "run"), "progress": False},
                         "train": {"seed": 0}, "gui": g}, [])


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_grpo_updates_parameters_and_logs_both_rewards(tmp_path, lora_rank):
    from genalign.gui.train import build_trainer

    torch.set_num_threads(1)
    trainer, processor, g = build_trainer(_cfg(tmp_path, lora_rank=lora_rank))
    args = trainer.args
    assert (args.beta, args.epsilon, args.loss_type, args.scale_rewards, args.temperature) == (
        0.04, 0.2, "grpo", "group", 1.0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before
    if lora_rank:
        assert all("lora_" in n for n in before)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, f"{len(unchanged)}/{len(before)} trainable tensors unchanged, e.g. {unchanged[:3]}"
    logs = [h for h in trainer.state.log_history if "rewards/gaussian_point/mean" in h]
    assert len(logs) == 2
    assert all("rewards/gaussian_coverage/mean" in h for h in logs)
    # the tiny policy places boxes roughly, so sampled completions earn some Gaussian reward
    assert max(h["rewards/gaussian_point/mean"] + h["rewards/gaussian_coverage/mean"] for h in logs) > 0


def test_run_end_to_end_with_toy_config(tmp_path):
    """run(cfg) on the shipped toy recipe (1 step): saves the policy, evaluates held-out screens, summarises."""
    from genalign.config import load_config
    from genalign.gui.evaluate import load_vlm
    from genalign.gui.train import run

    torch.set_num_threads(1)
    cfg = load_config(os.path.join(ROOT, "configs", "gui", "toy_gui_g2.yaml"), [
        f"run.output_dir={tmp_path / 'run'}", "run.progress=false", f"gui.model={ASSET}", "gui.max_steps=1",
        "gui.synthetic_train_screens=1", "gui.synthetic_eval_screens=1", "gui.use_cpu=true"])
    summary = run(cfg)
    assert summary["global_step"] == 1
    assert summary["eval"]["num_samples"] == 6
    assert os.path.exists(os.path.join(summary["output_dir"], "eval_report.json"))
    assert os.path.exists(os.path.join(summary["output_dir"], "config.yaml"))
    model, processor = load_vlm(summary["final_dir"])  # the saved policy loads back by path
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    hist = summary["reward_history"][0]
    assert "rewards/gaussian_point/mean" in hist and "rewards/gaussian_coverage/mean" in hist
