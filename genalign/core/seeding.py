"""One seeding module: every random draw of a run derives from (seed, iteration, ...) through :func:`derive_seed`,
so a resumed run continues exactly where an uninterrupted one would be, and nothing depends on how a batch is split
across processes."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """A 56-bit seed from integers, stable across processes, runs and Python versions."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:7], "little")


def torch_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
