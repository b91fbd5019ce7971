"""The budget ledger: per-deployment spend per window, and reservations settled by actual usage.

At route time the router *reserves* a query's estimated usage on the chosen deployment, atomically with the check
that the deployment can still afford it; when the call ends, ``settle`` replaces the reservation with what was
actually used. A reservation whose outcome never arrives (the process crashed mid-call, the logger was lost) is
*charged* at its reserved amount when it times out: the call may well have happened. A late settlement then replaces
that charge by the actual usage, and a late failure refunds it. Units are ``"tokens"`` and ``"usd"``.

The SQLite backend keeps everything in one file: it survives restarts and is safe across threads, asyncio tasks
(through worker threads) and processes sharing the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from llm_router_plugin._files import private_dir, private_file
from llm_router_plugin.config import is_redis_url, ledger_password
from llm_router_plugin.errors import LedgerCorruptError

if TYPE_CHECKING:
    from llm_router_plugin.config import RouterConfig

UNITS = ("tokens", "usd")
_log = logging.getLogger("llm_router_plugin")


@dataclass(frozen=True)
class Reservation:
    """A request to hold budget for one decision.

    Attributes:
        decision_id: the decision the hold belongs to.
        deployment: the deployment whose budget is held.
        window: the budget window the hold counts in (see :func:`window_index`).
        amounts: unit → amount held.
        limits: unit → the deployment's limit per window (units without a limit are not checked).
        expires_at: epoch seconds after which the hold is charged (its outcome never came).
        required: unit → what must be left under the limit for the hold to be granted (default: ``amounts``); more
            than ``amounts`` keeps a margin against a call that uses more than its hold.
    """

    decision_id: str
    deployment: str
    window: int
    amounts: Mapping[str, float]
    limits: Mapping[str, float]
    expires_at: float
    required: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Settlement:
    """The outcome of settling a decision.

    Attributes:
        deployment: the deployment charged.
        reserved: unit → amount that had been held.
        actual: unit → amount charged.
        was_expired: the reservation had already timed out and been charged (the actual usage replaced that charge).
    """

    deployment: str
    reserved: Mapping[str, float]
    actual: Mapping[str, float]
    was_expired: bool


def window_index(anchor: float, window_seconds: float | None, now: float) -> int:
    """The budget window ``now`` falls in: 0 for a budget that never resets, else whole windows since ``anchor``."""
    if window_seconds is None:
        return 0
    return max(0, math.floor((now - anchor) / window_seconds))


class BudgetLedger(Protocol):
    """What the router needs from a budget backend (SQLite here; other backends implement the same)."""

    @property
    def anchor(self) -> float:
        """Epoch seconds at which window 0 of every deployment started."""
        ...

    def try_reserve(self, reservation: Reservation, now: float | None = None) -> bool:
        """Hold ``reservation.amounts`` if every limited unit still covers ``required``; False (nothing held) else."""
        ...

    def settle(self, decision_id: str, actual: Mapping[str, float], now: float | None = None) -> Settlement | None:
        """Replace a decision's hold (live, expired or released) by its actual usage; ``None`` if settled before."""
        ...

    def release(self, decision_id: str) -> bool:
        """Drop a decision's hold (or refund its expiry charge) without charging: the call failed; False if none."""
        ...

    def usage(
        self, deployment: str, window: int, now: float | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """(spent, held) by unit for a deployment in a window."""
        ...

    def usages(
        self, windows: Sequence[tuple[str, int]], now: float | None = None
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """:meth:`usage` of several (deployment, window) pairs in one round trip, in their order."""
        ...

    def get_state(self, key: str) -> Any:
        """A JSON value persisted with the ledger (``None`` if absent)."""
        ...

    def set_state(self, key: str, value: Any) -> None:
        """Persist a JSON value with the ledger."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    deployment TEXT NOT NULL, window INTEGER NOT NULL, unit TEXT NOT NULL, amount REAL NOT NULL,
    PRIMARY KEY (deployment, window, unit));
CREATE TABLE IF NOT EXISTS holds (
    decision_id TEXT PRIMARY KEY, deployment TEXT NOT NULL, window INTEGER NOT NULL,
    tokens REAL NOT NULL, usd REAL NOT NULL, expires_at REAL NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS holds_live ON holds (deployment, window, status);
-- Expiry runs before every read and hold; without this it scans every hold ever made (100 ms at a million).
CREATE INDEX IF NOT EXISTS holds_expiry ON holds (expires_at) WHERE status = 'held';
"""

# The decision log (decisions.py) shares the ledger's file; alone, it is what a router on a Redis ledger leaves.
_DECISION_LOG_TABLES = frozenset({"decisions", "decision_count", "leases", "unsettled"})


def _open(path: Path) -> sqlite3.Connection:
    """Connect to the ledger file, creating it if it is missing; a file that is there must be a ledger.

    Raises:
        LedgerCorruptError: the file is empty, is not a SQLite database, or holds tables but neither the ledger's nor
            only the decision log's.
    """
    if not path.exists():
        _create(path)
    elif path.stat().st_size == 0:
        raise LedgerCorruptError(_corrupt(path, "the file is empty"))
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the check and the hold are one transaction
    # even against other processes using the same file.
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:  # locked, unreadable: not a verdict on the file's content
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        raise LedgerCorruptError(_corrupt(path, str(exc))) from None
    # A file with only the decision log's tables was written by a router whose budgets lived on Redis: no ledger yet.
    if tables and "meta" not in tables and not tables <= _DECISION_LOG_TABLES:
        db.close()
        raise LedgerCorruptError(_corrupt(path, f"a database with no 'meta' table but {sorted(tables)[:5]}"))
    return db


def _create(path: Path) -> None:
    # Build the new ledger under a temporary name, then link it into place: a process opening the ledger at the same
    # moment finds no file or a whole ledger, never the empty file SQLite starts a database with (which reads as a
    # truncated ledger).
    draft = path.with_name(f"{path.name}.{uuid.uuid4().hex}.new")
    private_file(draft)  # SQLite gives its -wal and -shm files the mode of the database file
    try:
        with closing(sqlite3.connect(str(draft))) as db, db:
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta VALUES ('anchor', ?)", (json.dumps(time.time()),))
        with suppress(FileExistsError):  # another process linked its ledger first: use that one
            os.link(draft, path)
    finally:
        draft.unlink()


def _corrupt(path: Path, why: str) -> str:
    return f"{path}: not a budget ledger ({why}); restore it from a backup, or move it away to start an empty ledger"


class SQLiteLedger:
    """The default ledger: one SQLite file (WAL mode), every check-and-hold in one ``BEGIN IMMEDIATE`` transaction.

    Args:
        path: the database file (created with its folder if missing: only a missing file starts an empty ledger).

    Raises:
        LedgerCorruptError: the file exists but is not a ledger (empty, not SQLite, or another program's database).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        self._lock = threading.Lock()
        self._db = _open(self.path)
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('anchor', ?)", (json.dumps(time.time()),))
            self._anchor = float(json.loads(db.execute("SELECT value FROM meta WHERE key='anchor'").fetchone()[0]))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def anchor(self) -> float:
        """Epoch seconds at which window 0 started (set when the file was created)."""
        return self._anchor

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        # A hold nobody settled is charged in full: the call may have been answered before its process died.
        for deployment, window, tokens, usd in db.execute(
            "SELECT deployment, window, SUM(tokens), SUM(usd) FROM holds WHERE status='held' AND expires_at <= ? "
            "GROUP BY deployment, window", (now,),
        ).fetchall():
            self._charge(db, deployment, window, {"tokens": tokens, "usd": usd})
        db.execute("UPDATE holds SET status='expired' WHERE status='held' AND expires_at <= ?", (now,))

    @staticmethod
    def _charge(db: sqlite3.Connection, deployment: str, window: int, amounts: Mapping[str, float]) -> None:
        for unit, amount in amounts.items():
            db.execute(
                "INSERT INTO spend VALUES (?, ?, ?, ?) ON CONFLICT (deployment, window, unit) "
                "DO UPDATE SET amount = amount + excluded.amount",
                (deployment, window, unit, float(amount)),
            )

    @staticmethod
    def _totals(db: sqlite3.Connection, deployment: str, window: int) -> tuple[dict[str, float], dict[str, float]]:
        spent = dict.fromkeys(UNITS, 0.0)
        for unit, amount in db.execute(
            "SELECT unit, amount FROM spend WHERE deployment=? AND window=?", (deployment, window)
        ):
            spent[unit] = amount
        tokens, usd = db.execute(
            "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM holds "
            "WHERE deployment=? AND window=? AND status='held'",
            (deployment, window),
        ).fetchone()
        return spent, {"tokens": float(tokens), "usd": float(usd)}

    def try_reserve(self, reservation: Reservation, now: float | None = None) -> bool:
        """Hold the reservation's amounts if every limited unit covers its required headroom (atomic check-and-hold).

        Args:
            reservation: what to hold, where, and the limits to respect.
            now: the clock (epoch seconds); defaults to ``time.time()``.

        Returns:
            True if held; False if some limit would be exceeded (nothing is held then).

        Raises:
            ValueError: an amount is negative or a unit is unknown.
        """
        now = time.time() if now is None else now
        required = reservation.amounts if reservation.required is None else reservation.required
        for name, amounts in (("amounts", reservation.amounts), ("required", required)):
            for unit, amount in amounts.items():
                if unit not in UNITS or amount < 0 or not math.isfinite(amount):
                    raise ValueError(f"{name}: {unit}={amount} must be a known unit with a finite, non-negative amount")
        with self._tx() as db:
            self._expire(db, now)
            spent, held = self._totals(db, reservation.deployment, reservation.window)
            for unit, limit in reservation.limits.items():
                need = max(required.get(unit, 0.0), reservation.amounts.get(unit, 0.0))
                if spent[unit] + held[unit] + need > limit:
                    return False
            db.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, 'held')",
                (
                    reservation.decision_id, reservation.deployment, reservation.window,
                    reservation.amounts.get("tokens", 0.0), reservation.amounts.get("usd", 0.0),
                    reservation.expires_at,
                ),
            )
        return True

    def settle(self, decision_id: str, actual: Mapping[str, float], now: float | None = None) -> Settlement | None:
        """Charge a decision's actual usage to its deployment and window, dropping its hold.

        A hold that expired was charged at its reserved amount; settling it replaces that charge by the actual usage.
        A released hold is charged the actual usage (the call was answered after all). Settling twice charges once.

        Args:
            decision_id: the decision.
            actual: unit → actual usage.
            now: the clock.

        Returns:
            What was held and charged, or ``None`` if the decision is unknown or already settled.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            self._expire(db, now)
            row = db.execute(
                "SELECT deployment, window, tokens, usd, status FROM holds WHERE decision_id=?", (decision_id,)
            ).fetchone()
            # A released hold can still be settled: a success reported after a failure report means the call was
            # answered after all (an output guardrail failed the request, events arrived out of order).
            if row is None or row[4] not in ("held", "expired", "released"):
                return None
            deployment, window, tokens, usd, status = row
            db.execute("UPDATE holds SET status='settled' WHERE decision_id=?", (decision_id,))
            charge = dict(actual)
            if status == "expired":
                charge = {u: charge.get(u, 0.0) - held for u, held in (("tokens", tokens), ("usd", usd))}
            self._charge(db, deployment, window, charge)
        return Settlement(deployment, {"tokens": tokens, "usd": usd}, dict(actual), status == "expired")

    def release(self, decision_id: str) -> bool:
        """Drop a live hold, or refund an expired hold's charge: the call failed, nothing was spent.

        Returns:
            True if a hold was dropped or refunded.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT deployment, window, tokens, usd, status FROM holds WHERE decision_id=?", (decision_id,)
            ).fetchone()
            if row is None or row[4] not in ("held", "expired"):
                return False
            deployment, window, tokens, usd, status = row
            db.execute("UPDATE holds SET status='released' WHERE decision_id=?", (decision_id,))
            if status == "expired":
                self._charge(db, deployment, window, {"tokens": -tokens, "usd": -usd})
            return True

    def usage(
        self, deployment: str, window: int, now: float | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Spent and currently held amounts of a deployment in a window, by unit."""
        return self.usages([(deployment, window)], now)[0]

    def usages(
        self, windows: Sequence[tuple[str, int]], now: float | None = None
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """Spent and held amounts of several (deployment, window) pairs, read in one transaction, in their order."""
        now = time.time() if now is None else now
        with self._tx() as db:
            self._expire(db, now)
            return [self._totals(db, deployment, window) for deployment, window in windows]

    def get_state(self, key: str) -> Any:
        """A persisted JSON value, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"state:{key}",)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        """Persist a JSON value."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"state:{key}", json.dumps(value)))


def open_ledger(config: RouterConfig, *, password: str | None = None) -> BudgetLedger:
    """The budget ledger a config names: ``config.ledger`` is ``"sqlite"`` or a Redis URL.

    ``"sqlite"`` opens (or creates) ``<data_dir>/ledger.sqlite3``. A Redis URL opens a
    :class:`~llm_router_plugin.redis_ledger.RedisLedger` under ``config.ledger_namespace``, with the password from
    the variable ``config.ledger_password_env`` names and every deployment's window (so timed windows' keys expire).
    With ``config.ledger_fallback == "local"`` it is wrapped in a
    :class:`~llm_router_plugin.failover_ledger.FailoverLedger` on ``<data_dir>/ledger-fallback.sqlite3``.

    Args:
        config: the router config.
        password: the Redis password when it comes from elsewhere than ``ledger_password_env`` (e.g. the LiteLLM
            proxy's ``router_settings.redis_password``); it overrides that variable. Never part of the config, so
            never dumped or logged with it.

    Returns:
        The ledger.

    Raises:
        ValueError: the password variable is missing or empty (it is read now, at start).
        LedgerCorruptError: the SQLite file (or the fallback file) exists but is not a ledger.
        redis.RedisError: the Redis server cannot be reached or refuses the credentials (with the local fallback, an
            unreachable server stops the start only if the fallback file does not know its anchor yet).
    """
    if not is_redis_url(config.ledger):
        return SQLiteLedger(Path(config.data_dir) / "ledger.sqlite3")
    from llm_router_plugin.redis_ledger import RedisLedger  # the redis client is loaded only when used

    if password is None:
        password = ledger_password(config.ledger_password_env)

    def connect() -> RedisLedger:
        return RedisLedger(
            config.ledger,
            password=password,
            namespace=config.ledger_namespace,
            window_seconds={d.name: d.window_seconds for d in config.deployments},
        )

    if config.ledger_fallback == "none":
        return connect()
    from llm_router_plugin.failover_ledger import FailoverLedger, FallbackLedger

    if config.ledger_fallback_share >= 1.0:
        _log.warning("ledger_fallback: local with ledger_fallback_share 1: while Redis is away each host may spend all "
                     "that was left of a budget; with N hosts set ledger_fallback_share to 1/N")

    return FailoverLedger(
        connect, FallbackLedger(Path(config.data_dir) / "ledger-fallback.sqlite3"),
        namespace=config.ledger_namespace, share=config.ledger_fallback_share,
    )
