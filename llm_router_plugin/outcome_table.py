"""Per-record outcomes and their running statistics, in SQLite: the history's columnar side store.

Chroma stays the source of truth (ids, embeddings, the HNSW index, texts, and every outcome in its metadata), but
reading 44 metadata fields of 50 neighbours costs a Chroma query ten times what ids and distances cost, and a mean
over a million records cannot be computed when the first query arrives. So every record's outcomes are also kept
here, one float64 row of ``(profiles, FIELDS)`` per record, read by id in one statement; beside them the running
sums, counts and maxima of every profile's fields, over all records and per cluster of the profile set's centres,
moved in the same transaction as the rows they summarise. The file lives next to the embedded store (or in memory
for a Chroma server without a local folder) and is rebuilt from Chroma when it is missing or stale.

Several processes may share the file (the workers of one proxy host): writes are transactions that read the old
rows first, so a record written twice moves the statistics once; readers notice other processes' writes by SQLite's
``data_version`` and reload the (small) statistics.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Outcome fields, in the order of the last axis of every array.
FIELDS = ("quality", "prompt_tokens", "completion_tokens", "cost_usd")
_WIDTH = len(FIELDS)
#: Ids per ``IN (...)`` list: under the 999 variables of SQLite before 3.32 (still the system SQLite of some hosts).
_IDS_PER_READ = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, outcomes BLOB NOT NULL, cluster INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
"""


@dataclass(frozen=True)
class ClusterStats:
    """Outcome statistics per group of records and profile, each of shape ``(groups, len(profiles), len(FIELDS))``.

    The table's own keep the whole history in group 0 and cluster ``c`` in group ``1 + c``;
    :meth:`ChromaHistory.cluster_stats <llm_router_plugin.history.ChromaHistory.cluster_stats>` gives the clusters only.

    Attributes:
        sums: sum of each field's values.
        counts: how many records carry each field.
        maxes: the largest value seen (NaN where none; a replaced value may still count: an upper bound).
    """

    sums: np.ndarray
    counts: np.ndarray
    maxes: np.ndarray


Outcomes = Mapping[str, Sequence[float]]
"""One record's outcomes: profile → values in :data:`FIELDS` order (NaN = missing)."""


class OutcomeTable:
    """The side store of one history collection.

    Args:
        path: the SQLite file; ``None`` = in memory (rebuilt by every process).
    """

    def __init__(self, path: str | Path | None) -> None:
        target = ":memory:" if path is None else str(path)
        self._conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=30.0)
        if path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._version: int | None = None
        self._profiles: list[str] = []
        self._centres: np.ndarray | None = None
        self._stats = ClusterStats(*(np.zeros((1, 0, _WIDTH)) for _ in range(3)))
        self._records = 0
        self._bookkeeping: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------ reading

    def _refresh(self) -> None:
        """Reload the profiles, centres and statistics when another connection changed the file; call with the lock."""
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._version:
            return
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        self._bookkeeping = {k[2:]: str(v) for k, v in meta.items() if k.startswith("x:")}
        self._profiles = json.loads(meta["profiles"]) if "profiles" in meta else []
        self._centres = _load_array(meta["centres"]) if "centres" in meta else None
        self._records = int(meta.get("records", 0))
        clusters = 1 + (len(self._centres) if self._centres is not None else 0)
        if "stats" in meta:
            arrays = _load_array(meta["stats"])
            self._stats = ClusterStats(arrays[0], arrays[1], arrays[2])
        else:
            self._stats = ClusterStats(np.zeros((clusters, 0, _WIDTH)), np.zeros((clusters, 0, _WIDTH)),
                                     np.full((clusters, 0, _WIDTH), np.nan))
        self._version = version

    def count(self) -> int:
        """Records in the table."""
        with self._lock:
            self._refresh()
            return self._records

    def profiles(self) -> list[str]:
        """Every profile that has at least one value in the table."""
        with self._lock:
            self._refresh()
            counts = self._stats.counts[0]
            return sorted(p for i, p in enumerate(self._profiles) if i < len(counts) and counts[i].any())

    def centres(self) -> np.ndarray | None:
        """The cluster centres the records are labelled with (``None``: no clusters)."""
        with self._lock:
            self._refresh()
            return self._centres

    def get(self, key: str) -> str | None:
        """A bookkeeping value of the store that owns the table (``None`` if never set)."""
        with self._lock:
            self._refresh()
            return self._bookkeeping.get(key)

    def outcomes(self, ids: Sequence[str], profiles: Sequence[str]) -> np.ndarray:
        """The outcomes of ``ids``, shape ``(len(ids), len(profiles), len(FIELDS))``; NaN rows for unknown ids."""
        out = np.full((len(ids), len(profiles), _WIDTH), np.nan)
        if not len(ids):
            return out
        blobs: dict[str, bytes] = {}
        with self._lock:
            self._refresh()
            columns = [self._profiles.index(p) if p in self._profiles else -1 for p in profiles]
            unique = list(dict.fromkeys(ids))
            for start in range(0, len(unique), _IDS_PER_READ):
                chunk = unique[start : start + _IDS_PER_READ]
                marks = ",".join("?" * len(chunk))
                blobs.update(self._conn.execute(f"SELECT id, outcomes FROM records WHERE id IN ({marks})", chunk))
        if not blobs or max(columns, default=-1) < 0:
            return out
        # One row per record over every profile it was written with (rows written before a profile was known are
        # narrower), then the asked profiles' columns in one step; unknown profiles read a column of NaN.
        width = max(columns) + 1
        stored = np.full((len(ids), width + 1, _WIDTH), np.nan)
        for row, record_id in enumerate(ids):
            blob = blobs.get(record_id)
            if blob is not None:
                values = np.frombuffer(blob, dtype=np.float64).reshape(-1, _WIDTH)[:width]
                stored[row, : len(values)] = values
        return stored[:, [c if c >= 0 else width for c in columns]]

    def statistics(self, profiles: Sequence[str]) -> ClusterStats:
        """The statistics of ``profiles`` (zeros and NaN maxima for profiles without values)."""
        with self._lock:
            self._refresh()
            stats, known = self._stats, self._profiles
        clusters = stats.sums.shape[0]
        sums = np.zeros((clusters, len(profiles), _WIDTH))
        counts = np.zeros_like(sums)
        maxes = np.full_like(sums, np.nan)
        for slot, profile in enumerate(profiles):
            column = known.index(profile) if profile in known else -1
            if 0 <= column < stats.sums.shape[1]:
                sums[:, slot], counts[:, slot], maxes[:, slot] = (stats.sums[:, column], stats.counts[:, column],
                                                                  stats.maxes[:, column])
        return ClusterStats(sums, counts, maxes)

    def rows(self, batch: int = 5000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every record's id and outcomes over all profiles (shape ``(n, len(profiles), len(FIELDS))``), in pages."""
        with self._lock:
            self._refresh()
            width = len(self._profiles)
        last = ""
        while True:
            with self._lock:
                page = self._conn.execute("SELECT id, outcomes FROM records WHERE id > ? ORDER BY id LIMIT ?",
                                          (last, batch)).fetchall()
            if not page:
                return
            last = page[-1][0]
            yield [p[0] for p in page], np.stack([_padded(p[1], width) for p in page])

    # ------------------------------------------------------------------------------------------------ writing

    def write(self, ids: Sequence[str], outcomes: Sequence[Outcomes], vectors: np.ndarray | None, *,
              merge: bool = False, bookkeeping: Mapping[str, str] | None = None) -> None:
        """Write records' outcomes and move the statistics from their old values to the new ones, in one transaction.

        Args:
            ids: record ids.
            outcomes: per record, its outcomes by profile.
            vectors: the records' embeddings (labels them with the nearest centre); ``None`` keeps the stored labels
                (a merge into existing records).
            merge: merge the given values into the stored ones (missing values keep the stored ones); else replace.
            bookkeeping: values of the owning store to set in the same transaction (see :meth:`get`).
        """
        with self._lock, self._transaction():
            self._refresh()
            for profile in {p for record in outcomes for p in record}:
                if profile not in self._profiles:
                    self._profiles.append(profile)
            width = len(self._profiles)
            old = self._stored(ids, width)
            new = np.stack([self._row(record, width) for record in outcomes]) if len(ids) else np.zeros((0, width,
                                                                                                         _WIDTH))
            if merge:
                new = np.where(np.isnan(new), old[0], new)  # old rows are NaN where nothing is stored
            labels = self._labels(vectors, old[1], len(ids))
            self._move(old, new, labels)
            self._conn.executemany(
                "INSERT INTO records (id, outcomes, cluster) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "outcomes = excluded.outcomes, cluster = excluded.cluster",
                [(record_id, new[i].tobytes(), int(labels[i])) for i, record_id in enumerate(ids)],
            )
            self._records += int((~old[2]).sum())
            self._save({"records": str(self._records), **{f"x:{k}": v for k, v in (bookkeeping or {}).items()}})
            self._bookkeeping.update(bookkeeping or {})

    def relabel(self, centres: np.ndarray | None, pages: Iterable[tuple[Sequence[str], np.ndarray]]) -> None:
        """Label every record with its nearest centre, a page per transaction, the clusters' statistics with it.

        A relabelling reads the whole history: one transaction around it would hold the write lock that other
        processes' writes wait for. Between pages, those writes label their records with the new centres already;
        records no page has reached yet are in no cluster meanwhile.

        Args:
            centres: normalised cluster centres, shape ``(K, dimension)``; ``None`` = no clusters.
            pages: every record's id and embedding, a page at a time (records not given keep no cluster).
        """
        with self._lock, self._transaction():
            self._refresh()
            whole = self._grown()
            self._centres = None if centres is None else np.asarray(centres, dtype=np.float32)
            groups = 1 + (len(self._centres) if self._centres is not None else 0)
            shape = (groups, len(self._profiles), _WIDTH)
            stats = ClusterStats(np.zeros(shape), np.zeros(shape), np.full(shape, np.nan))
            stats.sums[0], stats.counts[0], stats.maxes[0] = whole.sums[0], whole.counts[0], whole.maxes[0]
            self._conn.execute("UPDATE records SET cluster = -1")
            self._save_stats(stats)
            if self._centres is None:
                self._conn.execute("DELETE FROM meta WHERE key = 'centres'")
            else:
                self._save({"centres": _dump_array(self._centres)})
        for ids, vectors in pages:
            with self._lock, self._transaction():
                self._refresh()
                rows, labels, present = self._stored(ids, len(self._profiles))
                new = self._labels(np.asarray(vectors, dtype=np.float32), labels, len(ids))
                stats = self._grown()
                _accumulate(stats, rows[present], labels[present], -1.0, clusters_only=True)
                _accumulate(stats, rows[present], new[present], 1.0, clusters_only=True)
                self._conn.executemany("UPDATE records SET cluster = ? WHERE id = ?",
                                       [(int(label), record_id) for label, record_id in zip(new, ids, strict=True)])
                self._save_stats(stats)

    def clear(self) -> None:
        """Forget every record, profile and statistic (before a rebuild from the source of truth)."""
        with self._lock, self._transaction():
            self._conn.execute("DELETE FROM records")
            self._conn.execute("DELETE FROM meta")
            self._version = None
            self._refresh()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")  # the write lock first: the old rows read next must stay current
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._version = None  # the in-memory copies may have moved: read them again
            raise
        # Read before COMMIT, while the write lock keeps other connections out: read after it, another process's commit
        # in between would pass for seen, and this process would save its stale statistics over that commit's.
        self._version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        self._conn.execute("COMMIT")

    def _row(self, record: Outcomes, width: int) -> np.ndarray:
        row = np.full((width, _WIDTH), np.nan)
        for profile, values in record.items():
            row[self._profiles.index(profile)] = np.asarray(values, dtype=np.float64)
        return row

    def _stored(self, ids: Sequence[str], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored rows of ``ids`` (NaN where unknown), their cluster labels and whether each exists."""
        rows = np.full((len(ids), width, _WIDTH), np.nan)
        labels = np.full(len(ids), -1)
        present = np.zeros(len(ids), dtype=bool)
        position = {record_id: i for i, record_id in enumerate(ids)}
        for start in range(0, len(ids), _IDS_PER_READ):
            chunk = list(ids[start : start + _IDS_PER_READ])
            marks = ",".join("?" * len(chunk))
            for record_id, blob, label in self._conn.execute(
                f"SELECT id, outcomes, cluster FROM records WHERE id IN ({marks})", chunk
            ):
                i = position[record_id]
                rows[i], labels[i], present[i] = _padded(blob, width), label, True
        return rows, labels, present

    def _labels(self, vectors: np.ndarray | None, stored: np.ndarray, n: int) -> np.ndarray:
        if vectors is None:
            return stored
        if self._centres is None or not n:
            return np.full(n, -1)
        return np.argmax(np.asarray(vectors, dtype=np.float32).reshape(n, -1) @ self._centres.T, axis=1)

    def _grown(self) -> ClusterStats:
        """The statistics with room for every known profile and cluster."""
        clusters = 1 + (len(self._centres) if self._centres is not None else 0)
        width = len(self._profiles)
        old = self._stats
        if old.sums.shape[:2] == (clusters, width):
            return ClusterStats(old.sums.copy(), old.counts.copy(), old.maxes.copy())
        grown = ClusterStats(np.zeros((clusters, width, _WIDTH)), np.zeros((clusters, width, _WIDTH)),
                           np.full((clusters, width, _WIDTH), np.nan))
        if old.sums.shape[0] == clusters:
            have = old.sums.shape[1]
            grown.sums[:, :have], grown.counts[:, :have], grown.maxes[:, :have] = old.sums, old.counts, old.maxes
        return grown

    def _move(self, old: tuple[np.ndarray, np.ndarray, np.ndarray], new: np.ndarray, labels: np.ndarray) -> None:
        """Take the old rows out of the statistics and put the new ones in (maxima only grow: an upper bound)."""
        stats = self._grown()
        previous, old_labels, present = old
        for rows, row_labels, sign in ((previous[present], old_labels[present], -1.0), (new, labels, 1.0)):
            _accumulate(stats, rows, row_labels, sign)
        self._save_stats(stats)

    def _save_stats(self, stats: ClusterStats) -> None:
        """Make ``stats`` the statistics, in memory and in the file (within the caller's transaction)."""
        self._stats = stats
        self._save({"profiles": json.dumps(self._profiles),
                    "stats": _dump_array(np.stack([stats.sums, stats.counts, stats.maxes]))})

    def _save(self, values: Mapping[str, str | bytes]) -> None:
        self._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                               "value = excluded.value", list(values.items()))


def _accumulate(stats: ClusterStats, rows: np.ndarray, labels: np.ndarray, sign: float, *,
                clusters_only: bool = False) -> None:
    """Add (``sign`` 1) or take out (-1) rows of shape ``(n, profiles, FIELDS)`` from group 0 (unless
    ``clusters_only``) and from their clusters' groups."""
    if not len(rows):
        return
    width = stats.sums.shape[1]
    rows = rows[:, :width]
    seen = ~np.isnan(rows)
    values = np.where(seen, rows, 0.0)
    everything: list[tuple[int, Any]] = [] if clusters_only else [(0, slice(None))]
    targets = everything + [(1 + int(c), labels == c) for c in np.unique(labels) if c >= 0]
    for target, chosen in targets:
        stats.sums[target] += sign * values[chosen].sum(axis=0)
        stats.counts[target] += sign * seen[chosen].sum(axis=0)
        if sign > 0:  # a removed value is not taken back out of the maximum
            stats.maxes[target] = np.fmax(stats.maxes[target], np.fmax.reduce(rows[chosen], axis=0))


def _padded(blob: bytes, width: int) -> np.ndarray:
    """A stored row, widened with NaN to ``width`` profiles (profiles first seen after it was written)."""
    values = np.frombuffer(blob, dtype=np.float64).reshape(-1, _WIDTH)
    if len(values) >= width:
        return values[:width]
    return np.concatenate([values, np.full((width - len(values), _WIDTH), np.nan)])


def _dump_array(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)
