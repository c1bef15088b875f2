"""Run ``genalign <args>`` and SIGKILL the process at its N-th file-system write inside a phase (fault injection).

    python tests/core/fault_runner.py PHASE N COUNT_FILE -- train cfg.yaml ...

PHASE: ``checkpoint`` (inside Checkpointer.save), ``export`` (inside genalign.export.export) or ``overwrite`` (from
setting the previous run aside until the new run's first checkpoint is complete). Writes counted: os.replace /
rename / mkdir / makedirs / unlink / remove / rmdir, shutil.copy2 / copyfile, torch.save, safetensors save_file,
and open() for writing. N = 0 kills nothing and writes the phase's write count to COUNT_FILE (the reference run).
"""

import builtins
import os
import shutil
import signal
import sys

PHASE, KILL_AT, COUNT_FILE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ARGS = sys.argv[sys.argv.index("--") + 1:]
state = {"active": False, "count": 0}


def tick():
    if state["active"]:
        state["count"] += 1
        if state["count"] == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def counted(fn):
    def wrapper(*a, **k):
        tick()
        return fn(*a, **k)

    return wrapper


for mod, names in ((os, ("replace", "rename", "mkdir", "makedirs", "unlink", "remove", "rmdir")),
                   (shutil, ("copy2", "copyfile"))):
    for name in names:
        setattr(mod, name, counted(getattr(mod, name)))
_open = builtins.open


def _write_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        tick()
    return _open(file, mode, *a, **k)


builtins.open = _write_open

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.save = counted(torch.save)
safetensors.torch.save_file = counted(safetensors.torch.save_file)

import genalign.core.checkpoint as ckpt  # noqa: E402
import genalign.export as export_mod  # noqa: E402
import genalign.trainer as trainer_mod  # noqa: E402
from genalign.cli import main  # noqa: E402


def phase(fn, start=True, stop=True):
    def wrapper(*a, **k):
        if start:
            state["active"] = True
        try:
            return fn(*a, **k)
        finally:
            if stop:
                state["active"] = False

    return wrapper


if PHASE == "checkpoint":
    ckpt.Checkpointer.save = phase(ckpt.Checkpointer.save)
elif PHASE == "export":
    export_mod.export = phase(export_mod.export)
elif PHASE == "overwrite":
    trainer_mod.set_aside_previous_run = phase(trainer_mod.set_aside_previous_run, stop=False)
    ckpt.Checkpointer.save = phase(ckpt.Checkpointer.save, start=False)
else:
    raise SystemExit(f"unknown phase {PHASE}")

code = main(ARGS)
if KILL_AT == 0:
    with _open(COUNT_FILE, "w") as f:
        f.write(str(state["count"]))
sys.exit(code)
