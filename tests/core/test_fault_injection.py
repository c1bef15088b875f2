"""Fault injection: a run SIGKILLed at seeded points among its file-system writes (tests/core/fault_runner.py)
while it writes checkpoints, exports, or overwrites a previous run leaves either the old complete state or the new
complete state, and a resumed run continues bit-identically to one that was never interrupted."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from genalign.core.checkpoint import PREVIOUS, check_checkpoint_files, latest_checkpoint, list_checkpoints

from .helpers import REPO, run_cli, tiny_config, write_config

RUNNER = os.path.join(REPO, "tests", "core", "fault_runner.py")
LORA = "pytorch_lora_weights.safetensors"
SEED = 17  # fixes the kill points


def run_killable(phase, kill_at, count_file, args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, RUNNER, phase, str(kill_at), str(count_file), "--", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def config(tiny_sd3, tmp_path, name, **over):
    cfg = tiny_config(tiny_sd3, str(tmp_path / name), train__save_every=1, train__keep_checkpoints=2,
                      train__num_threads=1, **over)
    return write_config(tmp_path / f"{name}.yaml", cfg)


def assert_complete(ck):
    check_checkpoint_files(ck, 1)
    json.load(open(os.path.join(ck, "trainer_state.json")))


def test_kills_during_checkpoint_writes_resume_bit_identically(tiny_sd3, tmp_path):
    count = tmp_path / "count"
    ref = run_killable("checkpoint", 0, count, ["train", config(tiny_sd3, tmp_path, "ref", train__iterations=3)])
    assert ref.returncode == 0, ref.stderr[-2000:]
    total = int(count.read_text())
    want = load_file(os.path.join(latest_checkpoint(str(tmp_path / "ref")), LORA))
    points = sorted(random.Random(SEED).sample(range(1, total + 1), 3))
    for k in points:
        cfg = config(tiny_sd3, tmp_path, f"kill{k}", train__iterations=3)
        out = str(tmp_path / f"kill{k}")
        r = run_killable("checkpoint", k, count, ["train", cfg])
        assert r.returncode == -signal.SIGKILL, (k, r.returncode, r.stderr[-2000:])
        cks = list_checkpoints(out)
        for ck in cks:  # every checkpoint that is visible is complete
            assert_complete(ck)
        root = os.path.join(out, "checkpoints")
        visible = [n for n in os.listdir(root) if not n.startswith(".")] if os.path.isdir(root) else []
        assert sorted(os.path.join(root, n) for n in visible) == sorted(cks), (k, visible)
        again = run_cli(["train", cfg, "run.resume=true" if cks else "run.overwrite=true"])
        assert again.returncode == 0, (k, again.stderr[-2000:])
        got = load_file(os.path.join(latest_checkpoint(out), LORA))
        assert got.keys() == want.keys()
        for key in want:  # bit-identical to the run that was never interrupted
            assert torch.equal(got[key], want[key]), (k, key)
    print(f"\ncheckpoint kill points {points} of {total} writes: all resumed bit-identically")


def test_kills_during_export_and_overwrite_leave_old_or_new(tiny_sd3, tmp_path):
    count = tmp_path / "count"
    from genalign.cli import main
    from genalign.export import export

    assert main(["train", config(tiny_sd3, tmp_path, "run", train__iterations=2)]) == 0  # in-process: quicker
    ck1, ck2 = list_checkpoints(str(tmp_path / "run"))
    rng = random.Random(SEED)
    # --- export --overwrite over an earlier export ---------------------------------------------------------------
    old = str(tmp_path / "export_old")
    export(ck1, old)
    new = str(tmp_path / "export_new")
    shutil.copytree(old, new)
    assert run_killable("export", 0, count, ["export", ck2, "--out", new, "--overwrite"]).returncode == 0
    old_files, new_files = files(old), files(new)
    assert old_files[LORA] != new_files[LORA]
    total = int(count.read_text())
    points = sorted(rng.sample(range(1, total + 1), min(2, total)))
    for k in points:
        out = str(tmp_path / f"export{k}")
        shutil.copytree(old, out)
        r = run_killable("export", k, count, ["export", ck2, "--out", out, "--overwrite"])
        assert r.returncode == -signal.SIGKILL, (k, r.stderr[-2000:])
        assert files(out) in (old_files, new_files), k
    # --- run.overwrite=true over a finished run -------------------------------------------------------------------
    before = files(str(tmp_path / "run"))
    shutil.copytree(tmp_path / "run", tmp_path / "over_ref")
    ocfg = config(tiny_sd3, tmp_path, "over_ref", train__iterations=1)
    r = run_killable("overwrite", 0, count, ["train", ocfg, "run.overwrite=true"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [n for n in os.listdir(tmp_path / "over_ref") if n.startswith(PREVIOUS)]  # removed after checkpoint-1
    total_o = int(count.read_text())
    opoints = [rng.randint(2, 7), rng.randint(8, total_o)]  # one among the set-aside renames, one later
    for k in opoints:
        out = tmp_path / f"over{k}"
        shutil.copytree(tmp_path / "run", out)
        r = run_killable("overwrite", k, count, ["train", config(tiny_sd3, tmp_path, f"over{k}", train__iterations=1),
                                                 "run.overwrite=true"])
        assert r.returncode == -signal.SIGKILL, (k, r.stderr[-2000:])
        new_ck = os.path.join(out, "checkpoints", "checkpoint-1")
        new_done = os.path.isdir(new_ck) and not os.path.exists(os.path.join(out, "checkpoints", "checkpoint-2"))
        if new_done:  # the new state: its first checkpoint complete
            assert_complete(new_ck)
        else:  # the old state: every file of the previous run still there, in place or set aside, unchanged
            asides = [os.path.join(out, n) for n in os.listdir(out) if n.startswith(PREVIOUS)]
            for rel, data in before.items():
                places = [os.path.join(out, rel)] + [os.path.join(a, rel) for a in asides]
                assert any(os.path.exists(p) and open(p, "rb").read() == data for p in places), (k, rel)
    print(f"\nexport kill points {points} of {total}, overwrite kill points {opoints} of {total_o}: old or new state")
