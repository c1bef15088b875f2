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
#   inert_units    — residual units whose output branch is all zeros run as the identity (skip_inert_residual_units;
#                    results bit for bit the same)
SPEED_SWITCHES = ("encode_cache", "adapter_toggle", "inert_units")


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


def _effective_weight(conv: torch.nn.Module) -> torch.Tensor:
    if hasattr(conv, "weight_g") and hasattr(conv, "weight_v"):  # torch.nn.utils.weight_norm (what Oobleck uses)
        return torch._weight_norm(conv.weight_v, conv.weight_g, 0)
    return conv.weight  # a plain conv, or a parametrized one (parametrize computes .weight)


def _identity(hidden_state: torch.Tensor) -> torch.Tensor:
    return hidden_state


def skip_inert_residual_units(model: torch.nn.Module) -> int:
    """Make each ``OobleckResidualUnit`` (``x + conv2(snake(conv1(snake(x))))``, length-preserving) whose ``conv2``
    has all-zero weights and bias run as the identity: it computes ``x + 0``, so skipping it changes no result
    (for finite inputs) and saves two convolutions and two Snake activations at that stage's rate. The forward is
    replaced on the instance only: the parameters and the state dict stay as loaded, so saving the model writes them
    unchanged. Trained Stable Audio VAEs have no such unit (this is a scan at load); the ``tones`` world's analytic
    codec (genalign/tones/pipeline.py) has 12, which were half of a toy rollout's CPU time
    (scripts/bench/cpu_speed.py). Returns how many units were switched."""
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__ != "OobleckResidualUnit" or not hasattr(mod, "conv1") or not hasattr(mod, "conv2"):
                continue
            c1, c2 = mod.conv1, mod.conv2
            keeps_length = (c1.stride[0] == 1 and c2.stride[0] == 1 and c2.kernel_size[0] == 1 and c2.padding[0] == 0
                            and 2 * c1.padding[0] == c1.dilation[0] * (c1.kernel_size[0] - 1))
            zero = not bool(_effective_weight(c2).any()) and (c2.bias is None or not bool(c2.bias.any()))
            if keeps_length and zero:
                mod.forward = _identity
                n += 1
    return n


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
