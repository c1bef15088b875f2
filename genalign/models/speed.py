"""Work-avoiding helpers of the model base (issue "speed and scale"): switches for benchmarks, broadcasting a
cached one-sample conditioning, the reference policy's direct adapter toggle, regional ``torch.compile``."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from ..errors import ConfigError

# Work-avoiding shortcuts, each switchable off for benchmarking only (scripts/bench/iteration_speed.py measures what
# each one buys): GENALIGN_SPEED_OFF=encode_cache,adapter_toggle. Results agree either way up to float32 rounding (tests/models/test_speed.py).
#   encode_cache   — each unique prompt of a batch encoded once (a group's k copies share it), the negative prompt
#                    encoded once per run and kept on the adapter
#   adapter_toggle — the reference policy flips the LoRA layers' flag directly, from a list made once, instead of
#                    diffusers' disable_adapters()/enable_adapters() (a PEFT version check and a walk over every
#                    module on each call)
SPEED_SWITCHES = ("encode_cache", "adapter_toggle")


def speed_on(name: str) -> bool:
    off = {s.strip() for s in os.environ.get("GENALIGN_SPEED_OFF", "").split(",") if s.strip()}
    return name not in off


def expand_cond(cond: Dict[str, Any], n: int) -> Dict[str, Any]:
    """A one-sample conditioning broadcast to n samples (views, no copies)."""
    out = {}
    for k, v in cond.items():
        if torch.is_tensor(v) and v.ndim > 0:
            out[k] = v.expand(n, *v.shape[1:])
        elif isinstance(v, dict):
            out[k] = expand_cond(v, n)
        else:
            out[k] = v
    return out



def lora_layers(gen) -> Optional[List[torch.nn.Module]]:
    """The denoiser's PEFT tuner layers, listed once per adapter. The reference policy toggles their
    ``_disable_adapters`` flag (what PEFT's own ``enable_adapters`` sets; the LoRA forward reads only it), leaving
    ``requires_grad`` alone: the reference runs under no_grad, and a flag is all FSDP tolerates flipping.
    None = use diffusers' ``disable_adapters()`` / ``enable_adapters()``."""
    layers = getattr(gen, "_lora_layer_list", None)
    if layers is None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in gen.denoiser.modules() if isinstance(m, BaseTunerLayer)]
        if not layers or not all(hasattr(m, "_disable_adapters") for m in layers):
            return None
        gen._lora_layer_list = layers
    return layers


def compile_repeated_blocks(model: torch.nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` each repeated block of the denoiser in place (regional compilation: one compiled graph
    reused by every block, so compiling takes seconds, not minutes). The blocks are the classes diffusers lists in
    ``_repeated_blocks`` (what its ``compile_repeated_blocks`` uses), else in ``_no_split_modules`` (SD3's
    transformer lists none in ``_repeated_blocks``). LoRA layers inside a block are compiled with it; toggling the
    adapter off for the reference compiles a second variant once. Returns the number of compiled blocks."""
    import torch._dynamo

    valid = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in valid:
        raise ConfigError(f"'model.compile_backend' is '{backend}'; valid choices: {', '.join(valid)}")
    names = set(getattr(model, "_repeated_blocks", None) or getattr(model, "_no_split_modules", None) or [])
    n = 0
    for sub in model.modules():
        if type(sub).__name__ in names:
            sub.compile(backend=backend, dynamic=False)
            n += 1
    if n == 0:
        raise ConfigError(f"model.compile: {type(model).__name__} declares no repeated blocks to compile; set "
                          f"model.compile=false")
    return n
