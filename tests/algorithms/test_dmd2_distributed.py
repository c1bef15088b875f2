"""DMD2 in two processes (gloo on CPU, torchrun) equals one process with the same global batch, for every part: the
student (LoRA), the fake score and the GAN head (fed with real digits: each rank takes its slice of one real draw)."""

import json
import os
import sys

from safetensors.torch import load_file

from tests.core.helpers import tiny_config, write_config
from tests.core.test_distributed import _run


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(run):
    ck = os.path.join(run, "checkpoints", "checkpoint-2")
    out = {f"policy.{k}": v for k, v in load_file(os.path.join(ck, "pytorch_lora_weights.safetensors")).items()}
    for part in ("fake_score", "gan_head"):
        out.update({f"{part}.{k}": v for k, v in load_file(os.path.join(ck, "parts", f"{part}.safetensors")).items()})
    return out, json.load(open(os.path.join(ck, "trainer_state.json")))["part_steps"]


def test_dmd2_two_processes_match_one_for_every_part(tiny_sd3, tmp_path):
    over = dict(
        sampler={"num_steps": 2, "eval_num_steps": 2, "guidance_scale": 1.0, "kernel": "ode"},
        algorithm={"name": "dmd2", "fake_updates_per_generator": 2, "real_guidance": 2.0, "gan": True,
                   "gan_generator_weight": 0.1, "gan_discriminator_weight": 0.1},
        rewards=[], train__rollout_batch_size=4, train__train_batch_size=2, train__learning_rate=1e-3,
        train__save_every=2)
    cfgs = {}
    for run in ("one", "two"):
        c = tiny_config(tiny_sd3, str(tmp_path / run), **over)
        c["data"]["real"] = "toy:digits"
        cfgs[run] = write_config(tmp_path / f"{run}.yaml", c)
    _run([sys.executable, "-m", "genalign", "train", cfgs["one"]], {})
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          "-m", "genalign", "train", cfgs["two"]], {})
    (a, steps_a), (b, steps_b) = _state(str(tmp_path / "one")), _state(str(tmp_path / "two"))
    assert steps_a == steps_b == {"policy": 1, "fake_score": 2, "gan_head": 2}
    assert sorted(a) == sorted(b)
    for part in ("policy", "fake_score", "gan_head"):
        keys = [k for k in a if k.startswith(part + ".")]
        assert keys, part
        diff = max(float((a[k] - b[k]).abs().max()) for k in keys)
        assert diff < 1e-5, (part, diff)
    # and every part did train (the comparison is not between two untouched copies)
    lora_b = [k for k in a if k.startswith("policy.") and "lora_B" in k]
    assert max(float(a[k].abs().max()) for k in lora_b) > 1e-5
