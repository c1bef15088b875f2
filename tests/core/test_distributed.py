"""Two processes (gloo on CPU, launched by torchrun) give the same update as one process with the same global
batch, and groups are formed after gathering (per-prompt advantages see all G copies spread over ranks)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .helpers import REPO, tiny_config, write_config


def _run(cmd, env_extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1", **env_extra)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _one_and_two_processes(tiny_sd3, tmp_path, port: int, **over):
    """Train the same tiny config (2 iterations) in one process and in two (torchrun); return both runs' metric
    rows and final LoRA weights."""
    over = dict(train__iterations=2, train__rollout_batch_size=4, train__train_batch_size=2, **over)
    one = write_config(tmp_path / "one.yaml", tiny_config(tiny_sd3, str(tmp_path / "one"), **over))
    two = write_config(tmp_path / "two.yaml", tiny_config(tiny_sd3, str(tmp_path / "two"), **over))
    _run([sys.executable, "-m", "genalign", "train", one], {})
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
          "-m", "genalign", "train", two], {})
    rows = [[json.loads(l) for l in open(tmp_path / run / "metrics.jsonl")] for run in ("one", "two")]
    weights = [load_file(os.path.join(tmp_path, run, "checkpoints", "checkpoint-2", "pytorch_lora_weights.safetensors"))
               for run in ("one", "two")]
    return rows[0], rows[1], weights[0], weights[1]


def test_two_processes_match_one(tiny_sd3, tmp_path):
    rows1, rows2, w1, w2 = _one_and_two_processes(tiny_sd3, tmp_path, 29533)
    assert len(rows1) == len(rows2) == 2
    for a, b in zip(rows1, rows2):
        # the same 8 trajectories were sampled, whichever process sampled them, and the group statistics match
        assert a["trajectories"] == b["trajectories"] == 8 * a["step"]
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["reward_std"] == pytest.approx(b["reward_std"], abs=1e-6)
        assert a["zero_std_ratio"] == b["zero_std_ratio"]
    moved = max(float(v.abs().max()) for k, v in w1.items() if "lora_B" in k)
    assert moved > 1e-5  # the update is not trivially zero
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k


def test_dragon_set_reward_two_processes_match_one(tiny_sd3, tmp_path):
    """DRAGON with a set-scope reward (per-prompt Vendi): the reward scores the batch gathered from both processes,
    every process computes the same D⁺/D⁻ split, and the split statistics equal one process's on the same batch."""
    rows1, rows2, w1, w2 = _one_and_two_processes(
        tiny_sd3, tmp_path, 29534,
        algorithm={"name": "dragon", "loss": "kto", "split": "set", "split_mode": "quantile", "quantile": 0.25},
        rewards=[{"name": "vendi", "encoder": "tests.algorithms.trainer_utils:mean_rgb", "per_prompt": True},
                 {"name": "tests.core.rewards_for_tests:MeanBrightness", "weight": 0.1}])
    assert len(rows1) == len(rows2) == 2
    a, b = rows1[0], rows2[0]  # the first iteration: the same weights, so the same 8 samples
    for key in ("reward/vendi", "reward_mean", "dragon/set_value_batch", "dragon/set_value_pos",
                "dragon/set_value_neg", "dragon/n_pos", "dragon/n_neg", "dragon/n_items"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["dragon/set_value_pos"] > a["dragon/set_value_neg"]
    print("max weight difference, 2 processes vs 1:", max(float((w1[k] - w2[k]).abs().max()) for k in w1))
    assert all(float(w2[k].abs().max()) > 0 for k in w2 if "lora_B" in k)  # both processes trained
