"""Checks of constructor arguments, shared by the models and planners: one message
shape for every "must be a whole number >= 1" and "must be >= 0"."""

from __future__ import annotations

import math
import numbers


def _finite_real(value) -> bool:
    """A finite real number, not a bool (which Python counts as an int)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def counts(**values) -> list[int]:
    """The values as ints, in the order given.

    Raises:
        ValueError: a value that is not a whole number >= 1, named by its keyword.
    """
    out = []
    for name, value in values.items():
        if not (_finite_real(value) and value >= 1 and int(value) == value):
            raise ValueError(f"{name} must be a whole number >= 1, got {value}")
        out.append(int(value))
    return out


def non_negatives(**values) -> list[float]:
    """The values as floats, in the order given.

    Raises:
        ValueError: a value that is negative, infinite or NaN, named by its keyword.
    """
    out = []
    for name, value in values.items():
        if not (_finite_real(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value}")
        out.append(float(value))
    return out
