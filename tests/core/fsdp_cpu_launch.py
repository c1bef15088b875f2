"""Test-only entry point: ``genalign`` with accelerate's FSDP device gate lifted, so FSDP runs on a CPU host.

Why: accelerate (1.16, ``AcceleratorState.__init__`` in accelerate/state.py) switches the distributed type to FSDP
only when the process group's type is a multi-accelerator one (MULTI_GPU, MULTI_NPU, MULTI_XPU, ...); MULTI_CPU is
not in that list, so on a CPU-only host ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` silently
trains with plain DDP (genalign warns when that happens). PyTorch's FSDP2 (``fully_shard``) itself runs on CPU over
gloo. This launcher marks the already-formed gloo process group as MULTI_GPU *before* the trainer builds its
Accelerator, which is then promoted to FSDP by accelerate's own code; everything after that — the plugin read from
the launch config, ``Accelerator.prepare`` → ``fully_shard``, no_sync, clip_grad_norm_ — is accelerate's own FSDP
path. The device stays the CPU. Nothing outside tests uses this.

Run: ``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/core/fsdp_cpu_launch.py
train CONFIG.yaml`` (argv after the script is genalign's command line).
"""

import os
import sys

import torch


def lift_gate() -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)  # forms the gloo group exactly as the trainer's Accelerator(cpu=True) would
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise SystemExit(f"fsdp_cpu_launch: expected a MULTI_CPU process group, got {state.distributed_type}")
    state._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # the gate (see the module docstring)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    lift_gate()
    from genalign.cli import main

    sys.exit(main(sys.argv[1:]))
