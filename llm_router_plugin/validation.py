"""Checks of the numbers callers hand the router: each names the bad argument, and runs before anything is written.

A router holds other people's budgets: one NaN or negative count stored in the ledger or the decision log would
change what every later request gets. Every public entry point (Python API, CLI, integrations) validates through
these functions first.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def token_count(name: str, value: Any) -> int:
    """A token count: a whole number ≥ 0 (an integral float such as ``12.0`` is accepted).

    Args:
        name: the argument's name, for the message.
        value: the value to check.

    Returns:
        The count as an ``int``.

    Raises:
        ValueError: ``value`` is not a whole, finite, non-negative number (booleans and strings included).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a whole number of tokens, got {_shown(value)}")
    number = _finite(value)
    if number is None or number < 0 or number != int(number):
        raise ValueError(f"{name}: must be a whole, non-negative number of tokens, got {_shown(value)}")
    return int(number)


def optional_token_count(name: str, value: Any) -> int | None:
    """:func:`token_count`, with ``None`` passed through."""
    return None if value is None else token_count(name, value)


def amount(name: str, value: Any) -> float:
    """A finite, non-negative amount (USD, seconds).

    Args:
        name: the argument's name, for the message.
        value: the value to check.

    Returns:
        The amount as a ``float``.

    Raises:
        ValueError: ``value`` is not a finite, non-negative number.
    """
    number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) else _finite(value)
    if number is None or number < 0:
        raise ValueError(f"{name}: must be a finite, non-negative number, got {_shown(value)}")
    return number


def optional_amount(name: str, value: Any) -> float | None:
    """:func:`amount`, with ``None`` passed through."""
    return None if value is None else amount(name, value)


def score(name: str, value: Any) -> float:
    """A quality score in [0, 1].

    Raises:
        ValueError: ``value`` is not a number in [0, 1] (NaN and integers too large for a float included).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a number in [0, 1], got {_shown(value)}")
    # An int is compared as it is: one beyond the float range (JSON allows one) would overflow float().
    number = value if isinstance(value, int) else float(value)
    if not 0 <= number <= 1:
        raise ValueError(f"{name}: must be a number in [0, 1], got {_shown(value)}")
    return float(number)


def _finite(value: numbers.Real) -> float | None:
    """``value`` as a float, or ``None`` if it is not finite or beyond the float range (a JSON integer can be)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> str:
    """``repr`` of a bad value, cut short: it may come from a client and be megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else f"{text[:57]}..."


def lease_ms(lease_s: Any) -> int:
    """A lease duration in whole milliseconds (at least 1).

    Args:
        lease_s: the duration in seconds.

    Returns:
        Milliseconds, rounded up.

    Raises:
        ValueError: ``lease_s`` is not a finite number above 0 (the message names ``lease_s``).
    """
    if isinstance(lease_s, bool) or not isinstance(lease_s, numbers.Real):
        raise ValueError(f"lease_s: must be a number of seconds, got {_shown(lease_s)}")
    number = _finite(lease_s)
    if number is None or number <= 0:
        raise ValueError(f"lease_s: must be a finite number of seconds above 0, got {_shown(lease_s)}")
    return max(1, math.ceil(number * 1000))
