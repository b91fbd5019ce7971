"""The history store: past queries with each model's recorded outcome, kept in Chroma.

One record is one past query: its embedding, optionally its text and task label, and per *model profile* the
outcome of sending it there (quality in [0, 1], prompt and completion tokens, cost in USD; any may be missing).
Outcomes are flat Chroma metadata fields ``q|<profile>``, ``pt|<profile>``, ``ct|<profile>``, ``usd|<profile>``, so
one top-k query returns everything the estimator needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llm_router_plugin._files import private_dir
from llm_router_plugin.config import RouterConfig
from llm_router_plugin.exact_index import ExactIndex

_log = logging.getLogger("llm_router_plugin")

#: Outcome fields, in the order of the last axis of :attr:`Neighbours.outcomes`.
FIELDS = ("quality", "prompt_tokens", "completion_tokens", "cost_usd")
_PREFIX = {"quality": "q", "prompt_tokens": "pt", "completion_tokens": "ct", "cost_usd": "usd"}
_CHROMA_MAX_BATCH = 5000
#: Metadata field with the epoch seconds a record was last written through a store object: other processes read the
#: records written since they last looked, instead of the whole history.
WRITTEN_AT = "written_at"
#: Seconds a catch-up looks back before the newest write time it saw: writers on other hosts whose clocks lag.
CATCH_UP_SLACK_S = 5.0
#: Seconds between checks that the in-memory exact index still has the store's size (another process may write).
EXACT_RECHECK_S = 5.0
#: Collection metadata key changed by every merge into an existing record, so that other processes reload their caches.
MERGE_TOKEN = "llm_router_merge"
#: Hits (queries × neighbours) read per Chroma query call: its metadata lookup must stay under SQLite's variable limit.
_QUERY_HITS = 20_000
#: What a history store that cannot be reached raises: a Chroma server that went away or answers with an HTTP error
#: (chromadb's ``HttpClient`` speaks httpx), or an embedded store whose disk or socket failed (``OSError``, which
#: includes ``ConnectionError`` and ``TimeoutError``). Programming errors (``TypeError``, ``KeyError`` …) are not in it.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (httpx.HTTPError, OSError)
#: Seconds between two attempts to reach a Chroma server that did not answer (never one attempt per request).
CONNECT_RETRY_S = 5.0


class StoreNotConnectedError(ConnectionError):
    """The Chroma server has not answered yet: nothing is read or written until it does (one of
    :data:`STORE_UNREACHABLE`, so every caller that survives an outage survives this too)."""


def _is_unreachable(exc: BaseException) -> bool:
    """Whether an error says the store cannot be reached; chromadb's ``HttpClient`` reports a server that is not
    there at construction as a ``ValueError`` raised while handling the connection error."""
    return isinstance(exc, STORE_UNREACHABLE) or (
        isinstance(exc, ValueError) and isinstance(exc.__context__, STORE_UNREACHABLE)
    )


def _quiet_chroma() -> None:
    # Chroma and onnxruntime phone home by default; a router in production must not.
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class ModelOutcome(BaseModel):
    """What happened when one query was sent to one model; every field may be missing.

    Attributes:
        quality: score in [0, 1].
        prompt_tokens: tokens of the prompt.
        completion_tokens: tokens of the answer.
        cost_usd: what the call cost.
    """

    model_config = ConfigDict(extra="forbid")

    quality: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def metadata(self, profile: str) -> dict[str, float | int]:
        """The Chroma metadata fields of this outcome (missing values are left out)."""
        return {
            f"{_PREFIX[name]}|{profile}": value
            for name in FIELDS
            if (value := getattr(self, name)) is not None
        }


class HistoryRecord(BaseModel):
    """One past query and its outcomes, keyed by model profile.

    Attributes:
        id: stable identifier (importing the same row twice keeps one record).
        embedding: the query's normalised embedding.
        text: the query text, if it may be stored.
        task: a task label (e.g. the benchmark the query came from).
        outcomes: model profile → outcome.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    id: str = Field(min_length=1)
    embedding: list[float]
    text: str | None = None
    task: str | None = None
    outcomes: dict[str, ModelOutcome] = Field(default_factory=dict)

    @field_validator("embedding", mode="before")
    @classmethod
    def _to_list(cls, value: Any) -> Any:
        return value.tolist() if isinstance(value, np.ndarray) else value

    def metadata(self) -> dict[str, Any]:
        """All outcome fields plus the task label, as one flat Chroma metadata mapping."""
        meta: dict[str, Any] = {"task": self.task} if self.task else {}
        for profile, outcome in self.outcomes.items():
            meta.update(outcome.metadata(profile))
        return meta


@dataclass(frozen=True)
class ClusterStats:
    """Outcome statistics per cluster and profile, each of shape ``(K, len(profiles), len(FIELDS))``.

    Attributes:
        sums: sum of each field's values.
        counts: how many records carry each field.
        maxes: the largest value seen (NaN where none; a replaced value may still count: an upper bound).
    """

    sums: np.ndarray
    counts: np.ndarray
    maxes: np.ndarray


@dataclass(frozen=True)
class Neighbours:
    """The nearest history records of a batch of queries.

    Attributes:
        ids: record ids, one list of up to k per query.
        similarity: cosine similarity, shape ``(n, k)`` (NaN where fewer than k records exist).
        outcomes: shape ``(n, k, len(profiles), len(FIELDS))``; NaN where an outcome is missing.
        profiles: the profiles of the third axis.
    """

    ids: list[list[str]]
    similarity: np.ndarray
    outcomes: np.ndarray
    profiles: tuple[str, ...]


def outcome_array(metadatas: Sequence[Mapping[str, Any] | None], profiles: Sequence[str]) -> np.ndarray:
    """Turn flat outcome metadata into an array of shape ``(len(metadatas), len(profiles), len(FIELDS))``."""
    out = np.full((len(metadatas), len(profiles), len(FIELDS)), np.nan)
    keys = [[f"{_PREFIX[f]}|{p}" for f in FIELDS] for p in profiles]
    for row, meta in enumerate(metadatas):
        if not meta:
            continue
        for col, profile_keys in enumerate(keys):
            for field, key in enumerate(profile_keys):
                value = meta.get(key)
                if value is not None:
                    out[row, col, field] = float(value)
    return out


class ChromaHistory:
    """History records in a Chroma collection (embedded on disk, or a Chroma server).

    Args:
        path: folder of an embedded ``PersistentClient``; ignored when ``host`` is given.
        collection: collection name.
        host: a Chroma server host (``HttpClient``); ``None`` = embedded. A server that does not answer yet is
            logged (naming host and port) and tried again on use, at most every :data:`CONNECT_RETRY_S` seconds;
            until it answers, every read and write raises :class:`StoreNotConnectedError`.
        port: the server port.
        client: an already built Chroma client (takes precedence over ``path`` and ``host``).
        exact_search_max: up to this many records, neighbours are found by exact search over a copy of the
            embeddings in memory (:class:`~llm_router_plugin.exact_index.ExactIndex`); above it, by Chroma's HNSW
            index. 0 = always HNSW.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        collection: str = "history",
        host: str | None = None,
        port: int = 8000,
        client: Any = None,
        exact_search_max: int = 20_000,
    ) -> None:
        if exact_search_max < 0:
            raise ValueError(f"exact_search_max: must be at least 0, got {exact_search_max}")
        _quiet_chroma()
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        self._name = collection
        self._lock = threading.Lock()
        # Held across a write and the statistics it changes (the lock above guards the caches only).
        self._write_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._connect_due = -math.inf
        self._connect_failure = ""
        self._stats: _Stats | None = None
        self._exact_max = exact_search_max
        self._exact: ExactIndex | None = None
        self._exact_checked = -math.inf
        self._written_seen = 0.0  # newest write time the caches hold
        self._load_lock = threading.Lock()  # held while a cache is loaded from the store
        self._clusters: _ClusterStats | None = None
        self._merge_token: str | None = None
        self._merge_checked = time.monotonic()
        # Set while the store is unreachable, so that an outage logs one warning, not one per query.
        self._unreachable = False
        self._client: Any = client
        self._collection: Any = None
        self._address: str | None = None
        if client is None and host:
            self._address = f"{host}:{port}"
            self._connect = partial(chromadb.HttpClient, host=host, port=port, settings=settings)
            self._first_connect()
            return
        if client is None:
            if path is None:
                raise ValueError("path: give a folder for the embedded store, or a Chroma server host")
            private_dir(Path(path))
            self._client = chromadb.PersistentClient(path=str(path), settings=settings)
        self._open()

    def _first_connect(self) -> None:
        """Reach the Chroma server now if it answers; if not, say so and go on (it is tried again on use)."""
        try:
            self._store()
        except StoreNotConnectedError as exc:
            self._unreachable = True  # said here: the first failed read does not say it again
            # A router must start before its Chroma server (a container starting beside it): it routes on the priors
            # until the server answers. A wrong host looks the same, so it is named here, where it is looked for.
            _log.warning("history store: %s; tried again on use, at most every %s s (a router routes on the priors "
                         "and queues outcomes in its decision log meanwhile)", exc, CONNECT_RETRY_S)

    def _open(self) -> None:
        """Open (or create) the collection on the client, and read its merge token."""
        client = self._client if self._client is not None else self._connect()
        # embedding_function=None: Chroma's default would download a model; we always pass our own vectors.
        collection = client.get_or_create_collection(
            self._name, embedding_function=None, configuration={"hnsw": {"space": "cosine", "num_threads": 1}}
        )
        token = (collection.metadata or {}).get(MERGE_TOKEN)
        with self._lock:
            self._client, self._collection, self._merge_token = client, collection, token

    def _store(self) -> Any:
        """The Chroma collection; on a server not reached yet, connects first (at most every CONNECT_RETRY_S s).

        Raises:
            StoreNotConnectedError: the server has not answered yet (no attempt is made until the next is due).
        """
        collection = self._collection
        if collection is not None:
            return collection
        with self._connect_lock:
            if self._collection is None:
                now = time.monotonic()
                if now < self._connect_due:
                    raise StoreNotConnectedError(f"{self._connect_failure}; tried again in "
                                                 f"{self._connect_due - now:.0f} s")
                retried = self._connect_due > -math.inf
                self._connect_due = now + CONNECT_RETRY_S
                try:
                    self._open()
                except Exception as exc:
                    if not _is_unreachable(exc):
                        raise
                    reason = exc.__context__ if isinstance(exc, ValueError) else exc
                    self._connect_failure = f"no Chroma server answers at {self._address} ({reason})"
                    raise StoreNotConnectedError(self._connect_failure) from exc
                self._unreachable = False
                if retried:
                    _log.info("history store: connected to the Chroma server at %s", self._address)
        return self._collection

    @classmethod
    def from_config(cls, config: RouterConfig) -> ChromaHistory:
        """The store a router config names: a Chroma server at ``chroma_host``, else ``<data_dir>/chroma``."""
        return cls(Path(config.data_dir) / "chroma", collection=config.collection, host=config.chroma_host,
                   port=config.chroma_port, exact_search_max=config.exact_search_max)

    @property
    def name(self) -> str:
        """The collection name."""
        return self._name

    def count(self) -> int:
        """Number of records."""
        with self._lock:
            if self._stats is not None:
                return self._stats.records
        return int(self._store().count())

    def upsert(self, records: Sequence[HistoryRecord]) -> None:
        """Insert or replace records by id (so re-importing the same rows adds nothing).

        Args:
            records: the records; written in batches Chroma accepts.
        """
        for start in range(0, len(records), _CHROMA_MAX_BATCH):
            with self._write_lock:
                self._upsert_batch(records[start : start + _CHROMA_MAX_BATCH])

    def _upsert_batch(self, batch: Sequence[HistoryRecord]) -> None:
        """Write one batch and move the cached statistics with it."""
        replaced = self.existing_ids([r.id for r in batch])
        texts = [r.text for r in batch]
        now = time.time()
        metadatas = [{**r.metadata(), WRITTEN_AT: now} for r in batch]
        self._store().upsert(
            ids=[r.id for r in batch],
            embeddings=np.asarray([r.embedding for r in batch], dtype=np.float32),
            metadatas=[m or None for m in metadatas],
            documents=texts if all(t is not None for t in texts) else None,
        )
        vectors = np.asarray([r.embedding for r in batch], dtype=np.float32)
        with self._lock:
            exact = self._exact
            # The index knows a record a query's catch-up read between the write above and this update: its old values.
            olds = [exact.metadata(r.id) if exact is not None else None for r in batch]
            if any(r.id in replaced and old is None for r, old in zip(batch, olds, strict=True)):
                # A replaced record whose old values are not in memory cannot be subtracted: rescan on next use.
                self._stats = self._clusters = None
            for vector, meta, old in zip(vectors, metadatas, olds, strict=True):
                self._move_statistics(vector, old, meta)
            if exact is not None:
                exact.upsert([r.id for r in batch], vectors, metadatas)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        found: set[str] = set()
        for start in range(0, len(ids), _CHROMA_MAX_BATCH):
            got = self._store().get(ids=list(ids[start : start + _CHROMA_MAX_BATCH]), include=[])
            found.update(got["ids"])
        return found

    def update_outcome(self, record_id: str, profile: str, outcome: ModelOutcome) -> None:
        """Merge ``outcome``'s present fields into one record's outcome for ``profile``.

        Raises:
            KeyError: no record has that id.
        """
        new = outcome.metadata(profile)
        if not new:
            return  # nothing to merge (Chroma refuses an empty update)
        with self._write_lock:  # read, write and adjust the statistics as one step, or two merges count twice
            got = self._store().get(ids=[record_id], include=["metadatas", "embeddings"])
            if not got["ids"]:
                raise KeyError(f"record_id: no history record {record_id!r}")
            new = {**new, WRITTEN_AT: time.time()}
            old = {k: v for k, v in ((got["metadatas"] or [{}])[0] or {}).items() if k in new}
            self._store().update(ids=[record_id], metadatas=[new])
            vector = np.asarray(got["embeddings"], dtype=np.float32).reshape(1, -1)
            self._adjust(record_id, vector, old, new)
            # A merge leaves the record count as it was: other processes watch this token to reload their caches.
            token = uuid.uuid4().hex
            self._store().modify(metadata={MERGE_TOKEN: token})
            with self._lock:
                self._merge_token = token

    def _adjust(self, record_id: str, vector: np.ndarray, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Move the cached statistics and exact index from a record's ``old`` fields to its ``new`` ones."""
        with self._lock:
            if self._exact is not None:
                self._exact.merge_metadata(record_id, new)
            if self._stats is not None:
                self._stats.add(old, -1)
                self._stats.add(new, +1)
            if self._clusters is not None:
                self._clusters.add(vector, [old], -1)
                self._clusters.add(vector, [new], +1)

    def neighbours(self, embeddings: np.ndarray, k: int, profiles: Sequence[str]) -> Neighbours:
        """The ``k`` nearest records of each query embedding, with the outcomes of ``profiles``.

        Args:
            embeddings: shape ``(n, dimension)``.
            k: neighbours per query (fewer when the store is smaller).
            profiles: which profiles' outcomes to return.

        Returns:
            The neighbours of every query.
        """
        n = len(embeddings)
        exact = self._exact_index()
        total = len(exact) if exact is not None else self.count()
        width = min(k, total)
        sims = np.full((n, k), np.nan)
        outcomes = np.full((n, k, len(profiles), len(FIELDS)), np.nan)
        ids: list[list[str]] = [[] for _ in range(n)]
        if n == 0 or width == 0:
            return Neighbours(ids, sims, outcomes, tuple(profiles))
        vectors = np.asarray(embeddings, dtype=np.float32)
        if exact is not None:
            found, similarity, metadatas = exact.search(vectors, width)
            sims[:, : similarity.shape[1]] = similarity
            for row, (row_ids, metas) in enumerate(zip(found, metadatas, strict=True)):
                ids[row] = row_ids
                outcomes[row, : len(metas)] = outcome_array(metas, profiles)
            return Neighbours(ids, sims, outcomes, tuple(profiles))
        # Chroma reads the hits' metadata in one SQL statement per query call, which SQLite caps in variables.
        step = max(1, _QUERY_HITS // width)
        for start in range(0, n, step):
            result = self._store().query(
                query_embeddings=vectors[start : start + step], n_results=width, include=["metadatas", "distances"]
            )
            for offset, row_ids in enumerate(result["ids"]):
                row, got = start + offset, len(row_ids)
                ids[row] = list(row_ids)
                sims[row, :got] = 1.0 - np.asarray(result["distances"][offset], dtype=float)
                outcomes[row, :got] = outcome_array(result["metadatas"][offset], profiles)
        return Neighbours(ids, sims, outcomes, tuple(profiles))

    def _exact_index(self) -> ExactIndex | None:
        """The in-memory exact index while the store is small enough (``None`` above ``exact_search_max``).

        Loaded from Chroma on first use and kept up to date with the writes made through this object; every
        :data:`EXACT_RECHECK_S` seconds the store's size is compared with it, and a store that another process wrote
        to is loaded again.
        """
        now = time.monotonic()
        self._reload_if_merged(now)
        with self._lock:
            index, checked = self._exact, self._exact_checked
        if self._exact_max == 0:
            return None
        if index is not None and now - checked < EXACT_RECHECK_S:
            return index
        try:
            total = int(self._store().count())
        except STORE_UNREACHABLE as exc:
            if index is None:
                raise
            # The store went away (a Chroma server that stopped): the index in memory still answers, as of its last
            # check; the size is checked again in EXACT_RECHECK_S seconds.
            self._note_unreachable("size check", exc)
            with self._lock:
                self._exact_checked = now
            return index
        self._unreachable = False
        if total > self._exact_max:
            with self._lock:
                self._exact = None
            return None
        if index is None or len(index) != total:
            with self._load_lock:  # one load for the queries that arrive together, not one each
                with self._lock:
                    index = self._exact
                if index is not None and len(index) != total:
                    # Others' writes since the last look; then the size again, for writes that landed meanwhile.
                    # An index that still differs (records written without a write time, or deleted) is reloaded.
                    self._catch_up(index)
                    if len(index) != total:
                        with contextlib.suppress(*STORE_UNREACHABLE):  # unreadable: the index is loaded again
                            total = int(self._store().count())
                if index is None or len(index) != total:
                    try:
                        index = self._load_exact(total)
                    except Exception as exc:  # e.g. another process writing the embedded store: HNSW answers
                        _log.warning("exact history index not loaded (%s); using Chroma's index for this query", exc)
                        return None
                    # The statistics come from the same snapshot, so that the catch-up adds each record to both once.
                    stats = _Stats()
                    for meta in index.rows()[1]:
                        stats.add(meta, +1)
                    stats.records = len(index)
                    with self._lock:
                        self._stats, self._clusters = stats, None
        with self._lock:
            self._exact, self._exact_checked = index, now
        return index

    def _stored_merge_token(self) -> str | None:
        """The merge token in the store (read fresh: another process may have changed it)."""
        self._store()  # a server not reached yet: connect first (or raise)
        collection = self._client.get_collection(self._name, embedding_function=None)
        return (collection.metadata or {}).get(MERGE_TOKEN)

    def _reload_if_merged(self, now: float) -> None:
        """Every :data:`EXACT_RECHECK_S` seconds: drop the caches if another process merged outcomes meanwhile
        (``llm-router onboard`` or feedback next to a running router)."""
        with self._lock:
            if now - self._merge_checked < EXACT_RECHECK_S:
                return
            self._merge_checked = now
        try:
            stored = self._stored_merge_token()
        except Exception as exc:  # the store is unreachable: keep serving from the caches
            self._note_unreachable("merge check", exc)
            return
        with self._lock:
            if stored == self._merge_token:
                return
            self._merge_token = stored
            index = self._exact
        if index is not None and self._catch_up(index):
            return
        with self._lock:
            self._stats = self._clusters = self._exact = None

    def _note_unreachable(self, check: str, exc: Exception) -> None:
        """Log that the store cannot be reached, once per outage (the next successful size check ends it)."""
        if self._unreachable:
            return
        self._unreachable = True
        _log.warning("history store unreachable (%s failed: %s); serving neighbours and means from memory, which may "
                     "miss outcomes written elsewhere until it is back", check, exc)

    def _catch_up(self, index: ExactIndex) -> bool:
        """Add the records other processes wrote (or merged into) since the last look to the exact index and the
        cached statistics, read by their write time; False if the store could not be read."""
        with self._lock:
            since = self._written_seen - CATCH_UP_SLACK_S
        pages: list[Any] = []
        try:
            while not pages or len(pages[-1]["ids"]) == _CHROMA_MAX_BATCH:
                pages.append(self._store().get(where={WRITTEN_AT: {"$gte": since}}, include=["embeddings", "metadatas"],
                                               limit=_CHROMA_MAX_BATCH, offset=len(pages) * _CHROMA_MAX_BATCH))
        except STORE_UNREACHABLE as exc:
            self._note_unreachable("catch-up", exc)
            return False
        for page in pages:
            vectors = np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1)
            for record_id, vector, meta in zip(page["ids"], vectors, page["metadatas"] or [], strict=False):
                self._absorb(index, record_id, vector, dict(meta or {}))
        return True

    def _absorb(self, index: ExactIndex, record_id: str, vector: np.ndarray, meta: dict[str, Any]) -> None:
        """Move the exact index and the statistics to a record as another process wrote it."""
        with self._lock:
            self._written_seen = max(self._written_seen, float(meta.get(WRITTEN_AT, -math.inf)))
            old = index.metadata(record_id)
            if old == meta:
                return  # seen already (the catch-up looks back a little)
            index.upsert([record_id], vector[None, :], [meta])
            self._move_statistics(vector, old, meta)

    def _move_statistics(self, vector: np.ndarray, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        """Move the cached statistics from a record's old values (``None``: a new record) to its new ones; call with
        ``_lock`` held."""
        if self._stats is not None:
            if old is not None:
                self._stats.add(old, -1)
            self._stats.add(new, +1)
            self._stats.records += old is None
        if self._clusters is not None:
            if old is not None:
                self._clusters.add(vector[None, :], [old], -1)
            self._clusters.add(vector[None, :], [new], +1)

    def _load_exact(self, total: int) -> ExactIndex:
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        metadatas: list[Mapping[str, Any] | None] = []
        for offset in range(0, total, _CHROMA_MAX_BATCH):
            page = self._store().get(include=["embeddings", "metadatas"], limit=_CHROMA_MAX_BATCH, offset=offset)
            ids += page["ids"]
            vectors.append(np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1))
            metadatas += page["metadatas"] or [None] * len(page["ids"])
        newest = max((float((m or {}).get(WRITTEN_AT, 0.0)) for m in metadatas), default=0.0)
        with self._lock:
            self._written_seen = max(self._written_seen, newest)
        return ExactIndex(ids, np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32), metadatas)

    def profile_means(self, profiles: Sequence[str]) -> np.ndarray:
        """Each profile's mean outcome over the whole history, shape ``(len(profiles), len(FIELDS))`` (NaN = none).

        Scanned once, then kept up to date as records are added through this object.
        """
        stats = self._cached_stats()
        return np.stack([stats.mean(p) for p in profiles])

    def profiles(self) -> list[str]:
        """Every profile that has at least one outcome in the store."""
        return sorted(self._cached_stats().sums)

    def export(self) -> tuple[list[str], np.ndarray, list[str | None], list[str | None]]:
        """Every record's id, embedding, text and task label (``None`` where the store keeps none), by id."""
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        texts: list[str | None] = []
        tasks: list[str | None] = []
        for offset in range(0, self.count(), _CHROMA_MAX_BATCH):
            page = self._store().get(include=["embeddings", "documents", "metadatas"], limit=_CHROMA_MAX_BATCH,
                                        offset=offset)
            ids += page["ids"]
            vectors.append(np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1))
            texts += page["documents"] or [None] * len(page["ids"])
            tasks += [(meta or {}).get("task") for meta in page["metadatas"] or [None] * len(page["ids"])]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
        return [ids[i] for i in order], matrix[order], [texts[i] for i in order], [tasks[i] for i in order]

    def cluster_stats(self, centres: np.ndarray, profiles: Sequence[str]) -> ClusterStats:
        """Every profile's outcome statistics per cluster (each record in the cluster of its nearest centre).

        Scanned once per set of centres, then kept up to date as records are added through this object.

        Args:
            centres: normalised cluster centres, shape ``(K, dimension)``.
            profiles: the profiles.

        Returns:
            Sums, counts and largest values, each of shape ``(K, len(profiles), len(FIELDS))``.
        """
        centres = np.asarray(centres, dtype=np.float32)
        with self._lock:
            clusters = self._clusters
        if clusters is None or not clusters.matches(centres):
            with self._load_lock:  # one scan for the queries that arrive together, not one each
                with self._lock:
                    clusters = self._clusters
                if clusters is None or not clusters.matches(centres):
                    clusters = self._scan_clusters(centres)
                    with self._lock:
                        self._clusters = clusters
        return clusters.arrays(profiles)

    def _scan_clusters(self, centres: np.ndarray) -> _ClusterStats:
        clusters = _ClusterStats(centres)
        with self._lock:
            index = self._exact
        if index is not None:  # the exact index's snapshot: what its catch-ups keep up to date
            vectors, metas = index.rows()
            clusters.add(vectors, metas, +1)
            return clusters
        for offset in range(0, self.count(), _CHROMA_MAX_BATCH):
            page = self._store().get(include=["embeddings", "metadatas"], limit=_CHROMA_MAX_BATCH, offset=offset)
            vectors = np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1)
            clusters.add(vectors, page["metadatas"] or [None] * len(page["ids"]), +1)
        return clusters

    def _cached_stats(self) -> _Stats:
        with self._lock:
            stats = self._stats
        if stats is None and self._exact_max > 0:
            self._exact_index()  # a history small enough for the exact index: statistics from its snapshot
            with self._lock:
                stats = self._stats
        if stats is None:
            with self._load_lock:  # one scan for the queries that arrive together, not one each
                with self._lock:
                    stats = self._stats
                if stats is None:
                    stats = self._scan()
                    with self._lock:
                        self._stats = stats
        return stats

    def _scan(self) -> _Stats:
        stats = _Stats()
        total = self.count()
        for offset in range(0, total, _CHROMA_MAX_BATCH):
            page = self._store().get(
                include=["metadatas"], limit=_CHROMA_MAX_BATCH, offset=offset
            )
            for meta in page["metadatas"] or []:
                stats.add(meta or {}, +1)
            stats.records += len(page["ids"])
        return stats


class _Stats:
    """Running sums and counts of every profile's outcome fields."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.maxes: dict[str, np.ndarray] = {}
        self.records = 0

    def add(self, meta: Mapping[str, Any], sign: int) -> None:
        for key, value in meta.items():
            prefix, _, profile = key.partition("|")
            field = _FIELD_OF_PREFIX.get(prefix)
            if field is None or not profile or value is None:
                continue
            self.sums.setdefault(profile, np.zeros(len(FIELDS)))[field] += sign * float(value)
            self.counts.setdefault(profile, np.zeros(len(FIELDS)))[field] += sign
            if sign > 0:  # a removed value is not taken back out: the maximum stays an upper bound
                top = self.maxes.setdefault(profile, np.full(len(FIELDS), np.nan))
                top[field] = np.fmax(top[field], float(value))

    def mean(self, profile: str) -> np.ndarray:
        if profile not in self.sums:
            return np.full(len(FIELDS), np.nan)
        counts = self.counts[profile]
        return np.where(counts > 0, self.sums[profile] / np.maximum(counts, 1), np.nan)


class _ClusterStats:
    """One :class:`_Stats` per cluster of a set of centres."""

    def __init__(self, centres: np.ndarray) -> None:
        self.centres = centres
        self.stats = [_Stats() for _ in range(len(centres))]

    def matches(self, centres: np.ndarray) -> bool:
        return self.centres.shape == centres.shape and bool(np.array_equal(self.centres, centres))

    def add(self, vectors: np.ndarray, metadatas: Sequence[Mapping[str, Any] | None], sign: int) -> None:
        if not len(vectors):
            return
        labels = np.argmax(np.asarray(vectors, dtype=np.float32) @ self.centres.T, axis=1)
        for label, meta in zip(labels, metadatas, strict=True):
            self.stats[int(label)].add(meta or {}, sign)

    def arrays(self, profiles: Sequence[str]) -> ClusterStats:
        sums = np.zeros((len(self.stats), len(profiles), len(FIELDS)))
        counts = np.zeros_like(sums)
        maxes = np.full_like(sums, np.nan)
        for c, stats in enumerate(self.stats):
            for p, profile in enumerate(profiles):
                if profile in stats.sums:
                    sums[c, p], counts[c, p] = stats.sums[profile], stats.counts[profile]
                    maxes[c, p] = stats.maxes.get(profile, np.nan)
        return ClusterStats(sums, counts, maxes)


_FIELD_OF_PREFIX = {prefix: FIELDS.index(name) for name, prefix in _PREFIX.items()}

