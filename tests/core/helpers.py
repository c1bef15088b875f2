import os
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(model_path, out_dir, **over):
    cfg = {
        "model": {"family": "sd3", "path": model_path, "height": 16, "width": 16, "lora": {"rank": 4, "alpha": 8}},
        "sampler": {"num_steps": 3, "eval_num_steps": 3, "guidance_scale": 3.0, "noise_level": 0.7},
        "data": {"prompts": ["a red cube", "a blue ball", "a green tree"], "group_size": 4,
                 "prompts_per_iteration": 2, "eval_prompts": ["a red cube"], "eval_seeds": [0, 1]},
        "train": {"iterations": 2, "learning_rate": 3e-3, "rollout_batch_size": 8, "train_batch_size": 4,
                  "eval_every": 0, "save_every": 0, "optimizer_steps_per_iteration": 1, "seed": 0},
        "algorithm": {"name": "grpo", "clip_range": 1e-2, "beta": 0.01},
        "rewards": [{"name": "tests.core.rewards_for_tests:MeanBrightness"}],
        "run": {"output_dir": out_dir, "log_with": ["none"], "progress": False},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def write_config(path, cfg):
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def run_cli(args, cwd=REPO, timeout=600, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "genalign", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
