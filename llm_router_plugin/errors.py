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


class LedgerCorruptError(RouterError, ValueError):
    """The ledger file exists but is not a budget ledger (empty, not SQLite, or another program's database).

    The router stops rather than start an empty ledger over it: the spend recorded there would be lost and budgets
    overspent. The message names the file; it is left untouched for recovery.
    """


class BudgetExhaustedError(RouterError):
    """No deployment will serve the query and no fallback deployment is configured.

    Either no deployment's remaining budget covers the query's estimate, or (after the warm-up, in
    ``max_quality`` mode) the query's estimated quality is below the learned price of the budget it would use on
    every deployment that could afford it: that budget is worth more to the queries still expected. Configure a
    ``fallback`` deployment to serve such queries instead.

    Attributes:
        remaining: deployment name → remaining budget per unit (``{"tokens": …, "usd": …}``).
        priced_out: ``True`` if some deployment could afford the query but its budget is held for later queries.
    """

    def __init__(self, remaining: Mapping[str, Mapping[str, float]], *, priced_out: bool = False) -> None:
        self.remaining = {name: dict(units) for name, units in remaining.items()}
        self.priced_out = priced_out
        parts = []
        for name, units in self.remaining.items():
            left = ", ".join(f"{value:.6g} {unit}" for unit, value in units.items()) or "no budget"
            parts.append(f"{name} ({left} left)")
        lead = (
            "no deployment's budget is worth spending on this query (its estimated quality is below the learned "
            "price of the budget, which is kept for the queries still expected; configure a fallback deployment to "
            "serve such queries): "
            if priced_out
            else "every deployment's budget is exhausted for this query: "
        )
        super().__init__(lead + "; ".join(parts))


class LedgerUnavailableError(RouterError):
    """The budget ledger (a Redis server) cannot be reached: budgets cannot be checked, so nothing is served.

    The router fails closed: :meth:`~llm_router_plugin.router.Router.route` serves no deployment without a hold and
    :meth:`~llm_router_plugin.router.Router.record` leaves the decision open, so calling it again once the ledger is
    back settles it (and charges once).

    Attributes:
        ledger: the ledger's address, without credentials (``redis://host:port/db``).
        reason: what the client reported (refused, reset, timed out …).
    """

    def __init__(self, ledger: str, reason: str) -> None:
        self.ledger = ledger
        self.reason = reason
        super().__init__(f"budget ledger unreachable ({ledger}: {reason}): budgets cannot be checked, so routing and "
                         f"recording are refused until it is back")
