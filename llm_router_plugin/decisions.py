"""The decision log: every routing decision, kept until its outcome is recorded.

``record`` and ``feedback`` may come from another process or after a restart (a proxy worker, a webhook), so the
log lives in SQLite beside the ledger. It keeps each decision's query embedding (so the outcome joins history
without embedding the query again) and its estimates (the sample the dual weights are re-solved on).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_router_plugin._files import private_dir, private_file
from llm_router_plugin.validation import lease_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, deployment TEXT NOT NULL, profile TEXT NOT NULL,
    phase TEXT NOT NULL, embedding BLOB NOT NULL, text TEXT, estimates TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', outcome TEXT);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (created_at);
-- COUNT(*) scans the whole table (27 ms at a million decisions) and routing reads the count on every query: keep it
-- in a one-row table, updated in the same transaction as each insert (a log from before this table is counted once).
CREATE TABLE IF NOT EXISTS decision_count (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO decision_count (id, n) SELECT 0, COUNT(*) FROM decisions;
-- Leases let one process of those sharing the file run a job (the dual solve) at a time.
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
-- Outcomes reported while the budget ledger was unreachable, to settle once it is back (the record's arguments).
CREATE TABLE IF NOT EXISTS unsettled (id TEXT PRIMARY KEY, outcome TEXT NOT NULL, queued_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class LoggedDecision:
    """A decision as the log keeps it.

    Attributes:
        id: decision id.
        created_at: epoch seconds.
        deployment: chosen deployment.
        profile: its model profile.
        phase: ``"warmup"``, ``"learned"``, ``"explore"``, ``"fallback"`` or ``"declined"``.
        embedding: the query embedding.
        text: the query text when prompts are stored, else ``None``.
        estimates: deployment → {"quality": d̂, "tokens": ĝ, "usd": ĝ} at decision time.
        status: ``"open"``, ``"recorded"`` or ``"failed"``.
        outcome: what ``record``/``feedback`` stored.
    """

    id: str
    created_at: float
    deployment: str
    profile: str
    phase: str
    embedding: np.ndarray
    text: str | None
    estimates: dict[str, dict[str, float]]
    status: str
    outcome: dict[str, Any]


class DecisionLog:
    """Decisions in a SQLite file.

    Args:
        path: the database file (may be the ledger's file).
    """

    def __init__(self, path: str | Path) -> None:
        private_dir(Path(path).parent)
        private_file(Path(path))  # SQLite gives its -wal and -shm files the mode of the database file
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._add_history_queue()

    def _add_history_queue(self) -> None:
        """Add the history write queue to a log from an earlier version (the column, then its index to every log).

        ``history_pending`` is > 0 while a decision's outcome still has to be written to history (its write failed:
        the store was unreachable). Every failed write raises it by one, so that a retry that read the decision before
        a later failure (a feedback score) cannot take it off the queue.
        """
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(decisions)")}
        if "history_pending" not in columns:
            try:
                self._db.execute("ALTER TABLE decisions ADD COLUMN history_pending INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as exc:  # another process opening the same file added it first
                if "duplicate column" not in str(exc):
                    raise
        # Partial: the queue is read on a timer, and is empty but for outages.
        self._db.execute("CREATE INDEX IF NOT EXISTS decisions_history_pending ON decisions (created_at, id) "
                         "WHERE history_pending > 0")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def add(
        self, decision_id: str, deployment: str, profile: str, phase: str, embedding: np.ndarray,
        text: str | None, estimates: dict[str, dict[str, float]], created_at: float | None = None,
    ) -> None:
        """Log a new decision."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO decisions (id, created_at, deployment, profile, phase, embedding, text, estimates) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision_id, time.time() if created_at is None else created_at, deployment, profile, phase,
                    np.asarray(embedding, dtype=np.float32).tobytes(), text, json.dumps(estimates),
                ),
            )
            self._db.execute("UPDATE decision_count SET n = n + 1 WHERE id = 0")

    def get(self, decision_id: str) -> LoggedDecision | None:
        """The logged decision, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, created_at, deployment, profile, phase, embedding, text, estimates, status, outcome "
                "FROM decisions WHERE id=?",
                (decision_id,),
            ).fetchone()
        return None if row is None else _logged(row)

    def entries(self, since: float | None = None) -> list[LoggedDecision]:
        """Every decision made at or after ``since``, oldest first, without its embedding and text.

        A report reads the whole log: the embeddings would be most of what it reads, and none of what it needs.

        Args:
            since: epoch seconds; ``None`` = every decision.

        Returns:
            The decisions, each with an empty ``embedding`` and ``text=None``.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created_at, deployment, profile, phase, x'', NULL, estimates, status, outcome "
                "FROM decisions WHERE created_at >= ? ORDER BY created_at, id",
                (-math.inf if since is None else since,),
            ).fetchall()
        return [_logged(row) for row in rows]

    def close_decision(self, decision_id: str, status: str, outcome: dict[str, Any], current: str = "open") -> bool:
        """Mark a decision recorded or failed, with its outcome, if its status is still ``current``.

        A quality score already in the decision's outcome (feedback given before the close) is kept when
        ``outcome`` has none.

        Args:
            decision_id: the decision.
            status: ``"recorded"`` or ``"failed"``.
            outcome: what the call reported; replaces the stored outcome, except for a kept quality score.
            current: the status the decision must still have.

        Returns:
            False if the decision's status was not ``current`` (closed meanwhile, or unknown).
        """
        text = json.dumps(outcome)
        with self._lock, self._db:
            # One statement, so that a score merged by another process just before the close is not overwritten.
            cursor = self._db.execute(
                "UPDATE decisions SET status=?, outcome=CASE "
                "WHEN json_extract(?, '$.quality') IS NULL "
                "AND (CASE WHEN json_valid(outcome) THEN json_extract(outcome, '$.quality') END) IS NOT NULL "
                "THEN json_set(?, '$.quality', json_extract(outcome, '$.quality')) ELSE ? END "
                "WHERE id=? AND status=?",
                (status, text, text, text, decision_id, current),
            )
            return cursor.rowcount > 0

    def merge_outcome(self, decision_id: str, extra: dict[str, Any]) -> None:
        """Add fields (e.g. feedback quality) to a decision's outcome, which may not be written yet.

        Args:
            decision_id: the decision (an unknown id changes nothing).
            extra: top-level fields to set (``None`` removes one); the others are kept.
        """
        with self._lock, self._db:
            # One statement, so that an outcome another process writes meanwhile is merged into, not overwritten.
            self._db.execute(
                "UPDATE decisions SET outcome=json_patch(CASE WHEN json_valid(outcome) THEN outcome ELSE '{}' END, ?) "
                "WHERE id=?",
                (json.dumps(extra), decision_id),
            )

    def mark_history_pending(self, decision_id: str) -> None:
        """Queue a decision's outcome for history: its write failed, and is retried from this log.

        Args:
            decision_id: the decision (an unknown id changes nothing).
        """
        with self._lock, self._db:
            self._db.execute("UPDATE decisions SET history_pending = history_pending + 1 WHERE id=?",
                             (decision_id,))

    def history_pending(self, limit: int) -> list[tuple[str, int]]:
        """The oldest queued history writes.

        Args:
            limit: how many at most.

        Returns:
            ``(decision id, mark)`` pairs, oldest decision first; pass the mark to :meth:`clear_history_pending`.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, history_pending FROM decisions WHERE history_pending > 0 "
                "ORDER BY created_at, id LIMIT ?", (limit,)
            ).fetchall()
        return [(str(row[0]), int(row[1])) for row in rows]

    def clear_history_pending(self, decision_id: str, mark: int) -> bool:
        """Take a written decision off the history queue, unless a write failed again since ``mark`` was read.

        Args:
            decision_id: the decision.
            mark: its mark as :meth:`history_pending` returned it.

        Returns:
            False if it was queued again meanwhile (it stays queued: what was written may lack a later score).
        """
        with self._lock, self._db:
            cursor = self._db.execute("UPDATE decisions SET history_pending = 0 WHERE id=? AND history_pending=?",
                                      (decision_id, mark))
            return cursor.rowcount > 0

    def history_pending_count(self) -> int:
        """How many decisions' outcomes wait for their history write."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM decisions WHERE history_pending > 0").fetchone()[0])

    def queue_unsettled(self, decision_id: str, outcome: dict[str, Any]) -> None:
        """Keep an outcome the ledger could not settle (a later report of the same decision replaces it).

        Args:
            decision_id: the decision.
            outcome: the validated arguments of the ``record`` call.
        """
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO unsettled VALUES (?, ?, ?)",
                             (decision_id, json.dumps(outcome), time.time()))

    def unsettled(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """The oldest ``limit`` queued outcomes, as (decision id, outcome)."""
        with self._lock:
            rows = self._db.execute("SELECT id, outcome FROM unsettled ORDER BY queued_at, id LIMIT ?",
                                    (limit,)).fetchall()
        return [(row[0], json.loads(row[1])) for row in rows]

    def drop_unsettled(self, decision_id: str, outcome: dict[str, Any]) -> None:
        """Forget a queued outcome once settled, unless a newer report replaced it meanwhile."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM unsettled WHERE id=? AND outcome=?", (decision_id, json.dumps(outcome)))

    def unsettled_count(self) -> int:
        """Outcomes waiting for the ledger."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM unsettled").fetchone()[0])

    def open_counts(self, since: float) -> dict[str, int]:
        """Open decisions (outcome not recorded yet) made at or after ``since``, by deployment.

        Args:
            since: epoch seconds; older decisions' holds have expired (see ``reservation_timeout_s``).

        Returns:
            Deployment → open decisions (deployments without any are absent; refused queries are not counted).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT deployment, COUNT(*) FROM decisions WHERE created_at >= ? AND status='open' "
                "AND deployment != '' GROUP BY deployment", (since,),
            ).fetchall()
        return {str(deployment): int(count) for deployment, count in rows}

    def recent_estimates(self, limit: int) -> list[dict[str, dict[str, float]]]:
        """Estimates of the latest ``limit`` decisions (oldest first)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT estimates FROM decisions ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def count(self) -> int:
        """Decisions logged so far (by every process sharing the file)."""
        with self._lock:
            return int(self._db.execute("SELECT n FROM decision_count WHERE id = 0").fetchone()[0])

    def first_time(self) -> float | None:
        """When the first decision was made (``None`` if none)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(created_at) FROM decisions").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """Take (or renew) the lease ``name`` for ``lease_s`` seconds unless another owner holds it.

        Args:
            name: the lease.
            owner: a token unique to the caller.
            lease_s: how long the lease lasts if not released.

        Returns:
            Whether ``owner`` holds the lease now.

        Raises:
            ValueError: ``lease_s`` is not a finite number above 0.
        """
        expires = time.time() + lease_ms(lease_s) / 1000
        with self._lock, self._db:
            # One statement: of the processes sharing the file, exactly one takes a free or expired lease.
            cursor = self._db.execute(
                "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "owner=excluded.owner, expires_at=excluded.expires_at WHERE leases.owner=excluded.owner "
                "OR leases.expires_at <= ?",
                (name, owner, expires, time.time()),
            )
            return cursor.rowcount > 0

    def release(self, name: str, owner: str) -> None:
        """Give the lease back if ``owner`` holds it."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))


def _logged(row: Sequence[Any]) -> LoggedDecision:
    """A decision from a row of ``id, created_at, deployment, profile, phase, embedding, text, estimates, status,
    outcome``."""
    return LoggedDecision(
        id=row[0], created_at=row[1], deployment=row[2], profile=row[3], phase=row[4],
        embedding=np.frombuffer(row[5], dtype=np.float32).copy(), text=row[6], estimates=json.loads(row[7]),
        status=row[8], outcome=json.loads(row[9]) if row[9] else {},
    )


class SQLiteLearningStore:
    """The learning state of the routers sharing one decision log file (the processes of one host).

    The decision log is the sample: every decision it logs is counted and kept there already.

    Args:
        decisions: the decision log.
    """

    def __init__(self, decisions: DecisionLog) -> None:
        self.decisions = decisions

    def add(self, decision_id: str, profile: str, estimates: dict[str, dict[str, float]], created_at: float) -> int:
        """Nothing to add (the decision log counted the decision): the decision count."""
        return self.decisions.count()

    def profile_of(self, decision_id: str) -> str | None:
        """The profile of a logged decision (the log is the only one of its host)."""
        logged = self.decisions.get(decision_id)
        return None if logged is None else logged.profile

    def leave_feedback(self, decision_id: str, quality: float) -> None:
        """Merge the score into the logged decision's outcome."""
        self.decisions.merge_outcome(decision_id, {"quality": quality})

    def feedback_for(self, decision_id: str) -> float | None:
        """The score in the logged decision's outcome."""
        logged = self.decisions.get(decision_id)
        return None if logged is None else logged.outcome.get("quality")

    def count(self) -> int:
        """Decisions in the log."""
        return self.decisions.count()

    def first_time(self) -> float | None:
        """When the first logged decision was made."""
        return self.decisions.first_time()

    def recent(self, limit: int) -> list[dict[str, dict[str, float]]]:
        """Estimates of the newest ``limit`` decisions, oldest first."""
        return self.decisions.recent_estimates(limit)

    def acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """See :meth:`DecisionLog.acquire`."""
        return self.decisions.acquire(name, owner, lease_s)

    def release(self, name: str, owner: str) -> None:
        """See :meth:`DecisionLog.release`."""
        self.decisions.release(name, owner)
