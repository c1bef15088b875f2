"""argparse value types that check ranges, and a parser whose errors are one line (``GenalignError``).

    p.add_argument("--steps", type=positive_int)        # "--steps: -3 is not an integer > 0"
    p.add_argument("--timeout", type=positive_float)    # finite and > 0

argparse reports a type's ``ArgumentTypeError`` as ``argument --steps: ...``; :class:`OneLineParser` turns that
into a :class:`~genalign.errors.GenalignError`, which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import math

from ..errors import GenalignError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention), no usage dump
        raise GenalignError(f"{self.prog}: {message}")


def _int(text: str, what: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer {what}") from None


def _float(text: str, what: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number {what}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite number {what}")
    return v


def int_range(lo=None, hi=None):
    """An argparse type: an integer in [lo, hi] (either bound may be None)."""
    what = (f"in {lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None
            else f"<= {hi}" if hi is not None else "")

    def parse(text: str) -> int:
        v = _int(text, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range; expected an integer {what}")
        return v

    parse.__name__ = "integer"
    return parse


def seed(text: str) -> int:
    """A random seed: what ``torch.Generator.manual_seed`` accepts, less the negatives (0 .. 2**64-1)."""
    v = _int(text, "in 0..2**64-1")
    if not 0 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"seed {v} is out of range; expected an integer in 0..2**64-1")
    return v


def _bounded(number, noun: str, strict: bool, name: str):
    """An argparse type: ``number(text)`` (``_int`` or ``_float``) that must be > 0 (strict) or >= 0."""
    what = "> 0" if strict else ">= 0"

    def parse(text: str):
        v = number(text, what)
        if v < 0 or (strict and v == 0):
            raise argparse.ArgumentTypeError(f"{v if isinstance(v, int) else format(v, 'g')} must be {noun} {what}")
        return v

    parse.__name__ = name
    return parse


positive_int = _bounded(_int, "an integer", True, "positive_int")
non_negative_int = _bounded(_int, "an integer", False, "non_negative_int")
positive_float = _bounded(_float, "a number", True, "positive_float")
non_negative_float = _bounded(_float, "a number", False, "non_negative_float")


def finite_float(text: str) -> float:
    return _float(text, "")


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (``--base-from``)."""
    v = _float(text, "in (0, 1)")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is out of range; expected a number in (0, 1)")
    return v
