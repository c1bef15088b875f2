"""scripts/bench/gpu_iteration.py runs end to end in its CPU dry-run mode (tiny pipelines at 32 px), for both model
families and both algorithms, and prints one table row per configuration."""

import re
import subprocess
import sys

from .helpers import REPO


def test_gpu_iteration_dry_run():
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "scripts/bench/gpu_iteration.py", "--tiny", "--steps", "2", "--compile", "off",
                        "--warmup", "0", "--iterations", "1", "--group", "2", "--prompts", "1", "--batch", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln.split() for ln in r.stdout.splitlines() if re.match(r"^\s*(sd35m|flux1)\s", ln)]
    assert [(x[0], x[1], x[2]) for x in rows] == [("sd35m", "grpo", "off"), ("sd35m", "nft", "off"),
                                                 ("flux1", "grpo", "off"), ("flux1", "nft", "off")]
    for x in rows:
        s_iter, rollout, reward, update, traj_s = map(float, x[3:8])
        assert s_iter > 0 and rollout > 0 and update > 0 and traj_s > 0
