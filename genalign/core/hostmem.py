"""Host-memory allocator settings for CPU runs (``train.host_malloc``: ``auto`` | ``reuse`` | ``default``).

PyTorch allocates CPU tensors with the C library's ``malloc`` and has no caching allocator on the host. glibc
serves every request above its mmap threshold (dynamic, at most 32 MiB on 64-bit Linux) with a fresh ``mmap`` and
returns it with ``munmap`` on free, and it trims the top of the heap back to the kernel once more than 128 KiB is
free there. A CPU rollout or update allocates and frees the same large activations every step, so each step pays
the kernel for fresh zeroed pages. On the ``tones`` GRPO recipe (one thread) the kernel's share was 46 of 109 CPU
seconds, and a rollout batch took twice the time it takes without it (``scripts/bench/cpu_speed.py`` measures
both settings side by side: on its own, CPU seconds × 0.64 for GRPO and × 0.68 for NFT, page faults × 0.03–0.07,
the same training rewards bit for bit).

``reuse`` turns both off through ``mallopt`` (``M_MMAP_MAX`` 0: large blocks come from the heap and are reused;
``M_TRIM_THRESHOLD`` 1 GiB: freed memory stays mapped): the same arithmetic, with most page faults gone. The cost
is a higher resident size (freed blocks are kept for reuse rather than unmapped; peak RSS × 1.5–1.9 on those runs,
1.4 → 2.7 GB for NFT), which is why ``auto`` (the default) applies it only where the run computes on the CPU: a
GPU run keeps only weights and batches on the host, and unmapping a checkpoint's CPU copy after it moved to the
device matters more there. ``default`` keeps glibc's behaviour. The setting is process-wide and cannot be undone
for blocks already allocated; it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

from ..errors import ConfigError

MODES = ("auto", "reuse", "default")
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_applied = False


def _libc() -> Optional[ctypes.CDLL]:
    """glibc's handle, or None where ``mallopt`` is not glibc's (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt is a no-op
        return libc
    except (OSError, AttributeError):
        return None


def tune_host_malloc(mode: str, on_accelerator: bool) -> bool:
    """Apply the allocator settings above when ``mode`` asks for them (``reuse``; ``auto`` when the run computes on
    the CPU, i.e. not ``on_accelerator``) and the C library is glibc. Returns whether they are in effect."""
    global _applied
    if mode not in MODES:
        raise ConfigError(f"train.host_malloc is '{mode}'; valid choices: {', '.join(MODES)}")
    if mode == "default" or (mode == "auto" and on_accelerator):
        return _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on error
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
