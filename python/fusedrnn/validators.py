"""The argument checks of the whole package: one rule per kind of value.

Modules, optimisers, tasks and the ``fusedrnn`` command check their arguments with these
functions, so that one kind of value (a size, a probability, a choice) is accepted and rejected
the same way everywhere, with the same message. Each returns the value in its canonical Python
type and raises ``ValueError`` (``TypeError`` for :func:`dtype`) naming the argument::

    positive_int("LSTM", "hidden_size", 0)
    # ValueError: LSTM: hidden_size must be an integer >= 1, got 0
    positive_int(None, "--hidden", 0)
    # ValueError: --hidden must be an integer >= 1, got 0

``where`` is the function or class the value enters through (None for a command-line flag,
whose name already says where it comes from). :func:`flag_name` turns an argparse destination
into the flag (``batch_size`` -> ``--batch-size``). The ``parse_*`` factories make argparse
``type=`` callables from the same rules (the CLI's entry point for a value typed as text).
"""
from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable, Iterable, Optional

import numpy as np

__all__ = ["flag_name", "is_real", "positive_int", "probability", "choice", "boolean", "real",
           "nonneg_real", "seed", "dtype", "parse_int", "parse_float"]


def flag_name(dest: str) -> str:
    """``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + dest.replace("_", "-")


def _prefix(where: Optional[str]) -> str:
    return f"{where}: " if where else ""


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    """A real number that is not a bool (for checks with their own range and message)."""
    return isinstance(v, numbers.Real) and not _is_bool(v)


def positive_int(where: Optional[str], name: str, v, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bools are not integers here) as a Python int."""
    if _is_bool(v) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{_prefix(where)}{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def probability(where: Optional[str], name: str, v, closed: bool = False) -> float:
    """A number in [0, 1) (a dropout rate) as a Python float; ``closed``: in [0, 1] (torch's
    range for nn.LSTM's dropout and nn.Dropout's p: p = 1 drops everything)."""
    if _is_bool(v) or not isinstance(v, numbers.Real) or not (0 <= v <= 1 if closed else
                                                              0 <= v < 1):
        raise ValueError(f"{_prefix(where)}{name} must be a number in "
                         f"[0, 1{']' if closed else ')'}, got {v!r}")
    return float(v)


def choice(where: Optional[str], name: str, v, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (listed in the message in their order)."""
    choices = tuple(choices)
    if v not in choices:
        raise ValueError(f"{_prefix(where)}{name} must be one of "
                         f"{', '.join(map(str, choices))}, got {v!r}")
    return v


def boolean(where: Optional[str], name: str, v) -> bool:
    """True or False (numpy bools included; not 0 / 1)."""
    if not _is_bool(v):
        raise ValueError(f"{_prefix(where)}{name} must be a bool, got {v!r}")
    return bool(v)


def real(where: Optional[str], name: str, v) -> float:
    """A finite real number as a Python float."""
    if _is_bool(v) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{_prefix(where)}{name} must be a finite number, got {v!r}")
    return float(v)


def nonneg_real(where: Optional[str], name: str, v) -> float:
    """A finite real number >= 0 as a Python float."""
    if _is_bool(v) or not isinstance(v, numbers.Real) or not 0.0 <= v < math.inf:
        raise ValueError(f"{_prefix(where)}{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def seed(where: Optional[str], v, name: str = "seed") -> Optional[int]:
    """None, or an integer >= 0."""
    if v is None:
        return None
    if _is_bool(v) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{_prefix(where)}{name} must be a non-negative integer or None, "
                         f"got {v!r}")
    return int(v)


def array(where: Optional[str], name: str, a, shape, dtype, note: str = "") -> np.ndarray:
    """a, a numpy array of exactly ``shape`` and ``dtype`` (a gradient given to a backward):
    TypeError for anything else or another dtype, ValueError for another shape (checked in that
    order: type, shape, dtype); ``note`` (e.g. "(the output's)") follows the wanted shape and
    dtype in the messages."""
    shape, n = list(shape), f" {note}" if note else ""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{_prefix(where)}{name} must be a numpy array of shape {shape}{n}, got "
                        f"{type(a).__name__}")
    if list(a.shape) != shape:
        raise ValueError(f"{_prefix(where)}{name} must have shape {shape}{n}, got "
                         f"{list(a.shape)}")
    if a.dtype != dtype:
        raise TypeError(f"{_prefix(where)}{name} must have dtype {np.dtype(dtype)}{n}, got "
                        f"{a.dtype}")
    return a


def dtype(where: Optional[str], v) -> np.dtype:
    """float32 / float64 from a dtype, a numpy type or its name; anything else: TypeError."""
    try:
        dt = None if v is None else np.dtype(v)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{_prefix(where)}dtype must be float32 or float64, got {v!r}")
    return dt


# -- argparse types: the same rules for values typed as text ----------------------------------
def parse_int(minimum: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= minimum (argparse prints the flag with the message)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def parse_float(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = True,
                what: Optional[str] = None) -> Callable[[str], float]:
    """argparse ``type=``: a finite number in the interval (lo, hi) with the given ends."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and \
            (v < hi if hi_open else v <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    parse.__name__ = "number"
    return parse
