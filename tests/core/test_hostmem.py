"""train.host_malloc: glibc stops unmapping large freed blocks, so a CPU loop that allocates the same large
activations every step stops paying page faults for them (genalign/core/hostmem.py)."""

import subprocess
import sys

import pytest

from genalign.core.hostmem import _libc, tune_host_malloc
from genalign.errors import ConfigError

PROBE = """
import resource, sys, torch
from genalign.core.hostmem import tune_host_malloc
applied = tune_host_malloc(sys.argv[1], on_accelerator=sys.argv[2] == "gpu")
torch.set_num_threads(1)
torch.manual_seed(0)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
x = torch.randn(12288, 256)  # the hidden activation is 48 MiB: above glibc's largest dynamic mmap threshold
counts = []
with torch.no_grad():
    for _ in range(12):
        f0 = faults()
        x = x + 0.01 * net(x)
        counts.append(faults() - f0)
print(int(applied), sum(counts[1:]), repr(float(x.double().sum())))
"""


def probe(mode: str, device: str = "cpu"):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, device], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults, total = out.stdout.split()
    return applied == "1", int(faults), float(total)


@pytest.mark.skipif(_libc() is None, reason="mallopt settings are glibc's; this platform's C library is not glibc")
def test_reused_blocks_cut_the_page_faults_and_change_no_result():
    off, on = probe("default"), probe("reuse")
    assert not off[0] and on[0]
    assert on[2] == off[2]  # the same arithmetic, bit for bit
    # off: each step's large activations are fresh mappings, faulted in page by page; on: reused blocks
    assert on[1] * 3 < off[1], (on, off)


@pytest.mark.skipif(_libc() is None, reason="mallopt settings are glibc's; this platform's C library is not glibc")
def test_auto_applies_on_cpu_runs_only():
    assert probe("auto", "cpu")[0]
    assert not probe("auto", "gpu")[0]
    assert probe("reuse", "gpu")[0]


def test_unknown_mode_is_a_one_line_error_with_the_choices():
    with pytest.raises(ConfigError, match=r"train.host_malloc is 'fast'; valid choices: auto, reuse, default"):
        tune_host_malloc("fast", on_accelerator=False)
