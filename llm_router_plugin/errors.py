"""Exceptions raised by the router.

Every error the router raises on purpose derives from :class:`RouterError`, so a caller can catch the family.
Input errors also derive from :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Mapping


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


class EmptyQueryError(RouterError, ValueError):
    """The query has no text to route on (empty, whitespace only, or messages without text parts)."""


class UnknownDecisionError(RouterError, KeyError):
    """``record`` or ``feedback`` named a decision id the router has no record of."""


class HistoryFormatError(RouterError, ValueError):
    """A history file could not be imported; the message counts and names the offending rows or columns."""


class BudgetExhaustedError(RouterError):
    """No deployment can afford the query and no fallback deployment is configured.

    Attributes:
        remaining: deployment name → remaining budget per unit (``{"tokens": …, "usd": …}``).
    """

    def __init__(self, remaining: Mapping[str, Mapping[str, float]]) -> None:
        self.remaining = {name: dict(units) for name, units in remaining.items()}
        parts = []
        for name, units in self.remaining.items():
            left = ", ".join(f"{value:.6g} {unit}" for unit, value in units.items()) or "no budget"
            parts.append(f"{name} ({left} left)")
        super().__init__("every deployment's budget is exhausted for this query: " + "; ".join(parts))
