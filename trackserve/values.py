"""Plain values as checks and error messages see them.

A JSON file or a Python caller can hand trackserve an integer beyond any float (``10**400``:
``math.isfinite`` raises OverflowError on it) or a value whose ``repr`` runs to thousands of
characters; the checks use :func:`finite_real` and the messages :func:`shown`.
"""

from __future__ import annotations

import math
import numbers

#: The longest ``repr`` :func:`shown` prints whole.
SHOWN_CHARACTERS = 60


def finite_real(value) -> bool:
    """Whether ``value`` is a real number (not a bool) whose float is finite: False for NaN,
    infinities and integers beyond float64's range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def shown(value) -> str:
    """``repr(value)`` for a message, its start and length where it is longer than
    :data:`SHOWN_CHARACTERS` characters."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS - 20]}... ({len(text):,} characters)"
