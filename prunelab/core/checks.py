"""Checks of user input shared by every floor: each rule is written here once.

A check raises ValueError (or TypeError) naming the bad value, what is allowed, and what to do.
"""

from __future__ import annotations

import numbers

GRANULARITIES = ("unstructured", "structured", "2:4")
SCOPES = ("global", "layer")


def check_fraction(v, what: str = "sparsity") -> float:
    """``v`` as a float in [0, 1], or a ValueError that says what the fraction means."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= v <= 1):
        raise ValueError(f"{what} must be a fraction in [0, 1] (0.9 prunes 90% of weights), got {v!r}.")
    return float(v)


def check_choice(value, choices, what: str) -> None:
    """A ValueError naming ``value`` and the allowed ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose one of {list(choices)}.")
