"""A Redis ledger with a local fallback: budgets are enforced per host while Redis cannot be reached.

Every call goes to the primary (a :class:`~llm_router_plugin.redis_ledger.RedisLedger`) while it answers. When it
raises :class:`~llm_router_plugin.errors.LedgerUnavailableError`, the ledger goes on in a local SQLite file
(``<data_dir>/ledger-fallback.sqlite3``, shared by the router processes of the host):

- a hold is granted against the host's share of what was left of the budget when Redis was last read,
  ``(limit - spent - held) * share``; a deployment whose window was never read starts from its full limit;
- every change Redis must learn of (a hold made here, a settlement, a release) is queued in the same file, in order;
- at most once per ``probe_interval_s`` a call first checks whether Redis is back; if it is, the queue is replayed
  into it, oldest first, and Redis serves again.

Replay is idempotent per decision: Redis refuses a second hold for a decision ("already has a hold"), settles a
decision once and releases it once, and a row leaves the queue only after Redis took it; so two processes draining at
once, or a drain cut short, charge once. A local hold replays with its own expiry: one whose outcome never came is
charged in Redis at its reserved amount, as it was here.

Windows are counted from the primary's anchor, kept in the local file, so a router that starts while Redis is down
counts them as the others do. That anchor is set once per namespace and changes only if Redis lost its data (its
budgets are gone then too); spend queued meanwhile is replayed into the window indices it was recorded under.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from llm_router_plugin.budget import UNITS, Reservation, Settlement, SQLiteLedger
from llm_router_plugin.errors import LedgerUnavailableError
from llm_router_plugin.redis_ledger import UNREACHABLE, RedisLedger

#: Seconds between two checks whether the primary is back (and whether the queue holds rows to replay).
PROBE_INTERVAL_S = 1.0
#: Seconds between two warnings that the primary is unreachable (one per call would flood the log).
WARN_INTERVAL_S = 60.0
#: Local state key: the primary's namespace and anchor, and the usage last read from it.
_STATE_KEY = "failover:primary"
_OUTAGE: tuple[type[Exception], ...] = (LedgerUnavailableError, *UNREACHABLE)
_QUEUE_SCHEMA = "CREATE TABLE IF NOT EXISTS replay (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL);"
_log = logging.getLogger("llm_router_plugin")

# Usage read from the primary, by deployment: (window, spent, held). Only the latest window of each is kept.
_Known = dict[str, tuple[int, dict[str, float], dict[str, float]]]


class FallbackLedger(SQLiteLedger):
    """The local ledger of a :class:`FailoverLedger`: a SQLite ledger whose file also queues what Redis must replay.

    Args:
        path: the database file (created with its folder if missing).

    Raises:
        LedgerCorruptError: the file exists but is not a ledger.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._db.executescript(_QUEUE_SCHEMA)

    def enqueue(self, op: Mapping[str, Any]) -> None:
        """Queue one change for the primary (a JSON object with ``"op"``: ``reserve``, ``settle`` or ``release``)."""
        with self._tx() as db:
            db.execute("INSERT INTO replay (op) VALUES (?)", (json.dumps(op),))

    def pending(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """The oldest queued changes, as (sequence number, change)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, op FROM replay ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(seq), json.loads(op)) for seq, op in rows]

    def done(self, seq: int) -> None:
        """Drop a queued change the primary took."""
        with self._tx() as db:
            db.execute("DELETE FROM replay WHERE seq=?", (seq,))

    def forget_replayed(self) -> bool:
        """Drop the local spend and holds once the queue is empty: all of it is in the primary then.

        Kept, it would be counted a second time (once in what the primary reports, once here) against the share of
        the next outage. A hold dropped here that is settled during a later outage is queued as a primary's hold.

        Returns:
            True if the queue was empty and the local ledger was emptied.
        """
        with self._tx() as db:
            if db.execute("SELECT 1 FROM replay LIMIT 1").fetchone() is not None:
                return False
            db.execute("DELETE FROM spend")
            db.execute("DELETE FROM holds")
        return True


class FailoverLedger:
    """A :class:`~llm_router_plugin.budget.BudgetLedger` on a Redis primary that goes on per host while it is down.

    Args:
        connect: opens the primary (reads its anchor, so it raises a ``redis`` connection error while it is down).
        local: the host's fallback ledger and replay queue.
        namespace: the primary's namespace: the anchor and usage kept in ``local`` are its own.
        share: in (0, 1]: the share of a budget's remaining amount this host may spend while the primary is down.
        probe_interval_s: seconds between two checks whether the primary is back.

    Raises:
        ValueError: ``share`` is outside (0, 1], or ``local`` still queues changes for another namespace.
        redis.AuthenticationError: the primary refuses the credentials (a wrong password is no outage).
        redis.ConnectionError: the primary cannot be reached and ``local`` has no anchor of this namespace (windows
            could not be counted as the other routers count them).
    """

    def __init__(
        self,
        connect: Callable[[], RedisLedger],
        local: FallbackLedger,
        *,
        namespace: str,
        share: float = 1.0,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        if not (math.isfinite(share) and 0 < share <= 1):
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.probe_interval_s = probe_interval_s
        self._connect = connect
        self._local = local
        self._namespace = namespace
        self._probe_lock = threading.Lock()  # one check-and-replay at a time; other calls go on meanwhile
        self._down_lock = threading.Lock()
        self._checked_at = -math.inf
        self._warned_at = -math.inf
        self._down = False
        self._primary: RedisLedger | None = None
        saved = local.get_state(_STATE_KEY) or {}
        if saved.get("namespace", namespace) != namespace and local.pending(1):
            raise ValueError(
                f"ledger_namespace: {local.path} still queues spend for namespace {saved['namespace']!r}; start once "
                f"on that namespace with Redis up to replay it, or move the file away to drop it"
            )
        self._saved: dict[str, Any] = saved if saved.get("namespace") == namespace else {}
        self._known: _Known = {
            name: (int(window), spent, held) for name, (window, spent, held) in self._saved.get("known", {}).items()
        }
        try:
            self._use(connect())
        except UNREACHABLE as exc:
            if isinstance(exc, redis.AuthenticationError) or "anchor" not in self._saved:
                raise
            self._anchor = float(self._saved["anchor"])
            self._outage(exc)
        else:
            self._local.forget_replayed()

    @property
    def anchor(self) -> float:
        """Epoch seconds at which window 0 started: the primary's (as last read from it while it is down)."""
        return self._anchor

    def close(self) -> None:
        """Close the local file and the primary's client."""
        self._local.close()
        if self._primary is not None:
            self._primary.close()

    # ------------------------------------------------------------------------------------------ primary or not

    def _use(self, primary: RedisLedger) -> RedisLedger:
        """Adopt a primary just opened; its anchor is kept in the local file for a start while it is down."""
        before = self._saved.get("anchor")
        if before is not None and before != primary.anchor:
            _log.warning("budget ledger: Redis counts windows from %s, not from %s as before (it lost its data?); "
                         "spend queued meanwhile is replayed into the windows it was recorded under",
                         primary.anchor, before)
        self._primary, self._anchor = primary, primary.anchor
        if before != primary.anchor:
            self._saved = {**self._saved, "namespace": self._namespace, "anchor": primary.anchor}
            self._local.set_state(_STATE_KEY, self._saved)
        return primary

    def _up(self) -> RedisLedger | None:
        """The primary if it serves this call; ``None`` while it is down.

        At most once per ``probe_interval_s`` the queue is replayed first (while down, after a ping): what other
        processes of the host queued, or this one while the primary was down, reaches the primary before it serves.
        """
        current = None if self._down else self._primary
        if time.monotonic() - self._checked_at < self.probe_interval_s:
            return current
        if not self._probe_lock.acquire(blocking=False):
            return current  # another thread is checking or replaying
        try:
            self._checked_at = time.monotonic()
            return self._recover()
        finally:
            self._probe_lock.release()

    def _recover(self) -> RedisLedger | None:
        was_down = self._down
        try:
            primary = self._primary or self._use(self._connect())
            if was_down:
                primary.ping()
            replayed = self._drain(primary)
        except _OUTAGE as exc:
            self._outage(exc)
            return None
        if was_down or replayed:
            self._local.forget_replayed()
            _log.info("budget ledger %s: replayed %d queued settlements and %d holds; budgets are shared again",
                      "is back" if was_down else "queue", replayed["settle"] + replayed["release"], replayed["reserve"])
        self._down = False
        return primary

    def _drain(self, primary: RedisLedger) -> Counter[str]:
        """Replay the queue into the primary, oldest first; a row leaves the queue once the primary took it."""
        replayed: Counter[str] = Counter()
        while rows := self._local.pending():
            for seq, op in rows:
                _replay(primary, op)
                self._local.done(seq)
                replayed[op["op"]] += 1
        return replayed

    def _outage(self, exc: Exception) -> None:
        """Go on locally; the usage last read from the primary is kept for a router started during the outage."""
        with self._down_lock:
            if not self._down:
                self._down = True
                self._checked_at = time.monotonic()
                known = {**self._saved.get("known", {}), **self._known}
                self._saved = {**self._saved, "namespace": self._namespace, "anchor": self._anchor, "known": known}
                self._local.set_state(_STATE_KEY, self._saved)
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL_S:
            self._warned_at = now
            why = f"{exc.ledger}: {exc.reason}" if isinstance(exc, LedgerUnavailableError) else str(exc)
            _log.warning(
                "budget ledger unreachable (%s): budgets are enforced per host until it is back, each host spending "
                "at most %s of what was left of a budget when it was last read; holds and settlements are queued in "
                "%s and replayed into Redis then", why, f"{self.share:.0%}", self._local.path,
            )

    def _share_of(self, reservation: Reservation) -> dict[str, float]:
        """The limits of a local hold: this host's share of what the primary had left when last read."""
        known = self._known.get(reservation.deployment)
        used = (
            {u: known[1].get(u, 0.0) + known[2].get(u, 0.0) for u in UNITS}
            if known is not None and known[0] == reservation.window else {}
        )
        return {u: max(0.0, limit - used.get(u, 0.0)) * self.share for u, limit in reservation.limits.items()}

    # ------------------------------------------------------------------------------------------ the ledger

    def try_reserve(self, reservation: Reservation, now: float | None = None) -> bool:
        """Hold in the primary; while it is down, in the local ledger within this host's share (and queue the hold).

        Args:
            reservation: what to hold, where, and the limits to respect (locally: the share of what is left).
            now: the clock (epoch seconds).

        Returns:
            True if held; False if some limit would be exceeded.

        Raises:
            ValueError: an amount is negative or a unit is unknown, or the decision already has a hold.
        """
        primary = self._up()
        if primary is not None:
            try:
                return primary.try_reserve(reservation, now)
            except LedgerUnavailableError as exc:
                self._outage(exc)
        if not self._local.try_reserve(replace(reservation, limits=self._share_of(reservation)), now):
            return False
        # Queued after the hold: a crash in between loses a hold whose call was never made.
        self._local.enqueue({
            "op": "reserve", "id": reservation.decision_id, "deployment": reservation.deployment,
            "window": int(reservation.window), "amounts": dict(reservation.amounts),
            "expires_at": reservation.expires_at,
        })
        return True

    def settle(self, decision_id: str, actual: Mapping[str, float], now: float | None = None) -> Settlement | None:
        """Settle in the primary; while it is down, settle a local hold here, and queue the settlement for Redis.

        Args:
            decision_id: the decision.
            actual: unit → actual usage.
            now: the clock.

        Returns:
            What was held and charged; ``None`` if the decision is unknown or settled before, or if its hold is in
            the primary while it is down (the settlement is charged there once it is back).
        """
        primary = self._up()
        if primary is not None:
            try:
                settled = primary.settle(decision_id, actual, now)
            except LedgerUnavailableError as exc:
                self._outage(exc)
            else:
                if settled is not None:
                    return settled
                # Unknown to the primary: a hold made here whose replay is still queued (by another process).
                local = self._local.settle(decision_id, actual, now)
                if local is not None:
                    self._local.enqueue({"op": "settle", "id": decision_id, "actual": dict(actual)})
                    return local
                # Gone from here too: another process replayed it into the primary meanwhile (it forgets its local
                # holds once they are there), so the primary has it now.
                return self._settle_primary_again(primary, decision_id, actual, now)
        local = self._local.settle(decision_id, actual, now)
        self._local.enqueue({"op": "settle", "id": decision_id, "actual": dict(actual)})
        return local

    def release(self, decision_id: str) -> bool:
        """Release in the primary; while it is down, release a local hold here, and queue the release for Redis.

        Returns:
            True if a hold was dropped or refunded, or (while the primary is down) the release was queued.
        """
        primary = self._up()
        if primary is not None:
            try:
                if primary.release(decision_id):
                    return True
            except LedgerUnavailableError as exc:
                self._outage(exc)
            else:
                # Unknown to the primary: a hold made here whose replay is still queued (by another process).
                if not self._local.release(decision_id):
                    # Or replayed into the primary meanwhile by another process, which then forgot it here.
                    return self._release_primary_again(primary, decision_id)
        else:
            self._local.release(decision_id)
        self._local.enqueue({"op": "release", "id": decision_id})
        return True

    def _settle_primary_again(self, primary: RedisLedger, decision_id: str, actual: Mapping[str, float],
                              now: float | None) -> Settlement | None:
        try:
            return primary.settle(decision_id, actual, now)
        except LedgerUnavailableError as exc:  # gone again: queued for it, like any settlement during an outage
            self._outage(exc)
            self._local.enqueue({"op": "settle", "id": decision_id, "actual": dict(actual)})
            return None

    def _release_primary_again(self, primary: RedisLedger, decision_id: str) -> bool:
        try:
            return primary.release(decision_id)
        except LedgerUnavailableError as exc:
            self._outage(exc)
            self._local.enqueue({"op": "release", "id": decision_id})
            return True

    def usage(
        self, deployment: str, window: int, now: float | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Spent and held amounts by unit: the primary's; while it is down, its last known ones plus the local ones."""
        return self.usages([(deployment, window)], now)[0]

    def usages(
        self, windows: Sequence[tuple[str, int]], now: float | None = None
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """:meth:`usage` of several (deployment, window) pairs, in one round trip to the primary, in their order."""
        primary = self._up()
        if primary is not None:
            try:
                read = primary.usages(windows, now)
            except LedgerUnavailableError as exc:
                self._outage(exc)
            else:
                for (deployment, window), (spent, held) in zip(windows, read, strict=True):
                    self._known[deployment] = (int(window), dict(spent), dict(held))
                return read
        return [self._with_known(deployment, window, *usage)
                for (deployment, window), usage in zip(windows, self._local.usages(windows, now), strict=True)]

    def _with_known(self, deployment: str, window: int, spent: dict[str, float], held: dict[str, float]
                    ) -> tuple[dict[str, float], dict[str, float]]:
        """Local usage plus what the primary last showed for the same window (nothing for another window)."""
        known = self._known.get(deployment)
        if known is None or known[0] != window:
            return spent, held
        return ({u: spent[u] + known[1].get(u, 0.0) for u in UNITS},
                {u: held[u] + known[2].get(u, 0.0) for u in UNITS})

    def get_state(self, key: str) -> Any:
        """A persisted JSON value: the primary's; while it is down, the copy kept in the local file."""
        primary = self._up()
        if primary is not None:
            try:
                return primary.get_state(key)
            except LedgerUnavailableError as exc:
                self._outage(exc)
        return self._local.get_state(key)

    def set_state(self, key: str, value: Any) -> None:
        """Persist a JSON value in the primary (while it is up) and in the local file (read while it is down)."""
        self._local.set_state(key, value)
        primary = self._up()
        if primary is not None:
            try:
                primary.set_state(key, value)
            except LedgerUnavailableError as exc:
                self._outage(exc)


def _replay(primary: RedisLedger, op: Mapping[str, Any]) -> None:
    """Apply one queued change to the primary (a change it already has changes nothing)."""
    if op["op"] == "reserve":
        hold = Reservation(op["id"], op["deployment"], op["window"], op["amounts"], {}, op["expires_at"])
        # The amounts passed the local ledger's checks, so the one ValueError left is "already has a hold": an
        # earlier replay (this process's, another's, or one cut short) got it there.
        with suppress(ValueError):
            primary.try_reserve(hold)
    elif op["op"] == "settle":
        primary.settle(op["id"], op["actual"])
    else:
        primary.release(op["id"])
