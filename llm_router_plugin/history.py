"""The history store: past queries with each model's recorded outcome, kept in Chroma.

One record is one past query: its embedding, optionally its text and task label, and per *model profile* the
outcome of sending it there (quality in [0, 1], prompt and completion tokens, cost in USD; any may be missing).
In Chroma, a record's outcomes are one JSON metadata field (:data:`OUTCOMES`: profile → the four values, ``null``
where missing); stores written by earlier releases hold flat fields ``q|<profile>``, ``pt|<profile>`` … and are read
as well. A copy of every record's outcomes, and their running statistics, is kept in a local
:class:`~llm_router_plugin.outcome_table.OutcomeTable`, so that a neighbour query asks Chroma for ids and distances
only, and the means over a million records are there when the first query arrives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
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
from llm_router_plugin.outcome_table import FIELDS as FIELDS
from llm_router_plugin.outcome_table import ClusterStats as ClusterStats
from llm_router_plugin.outcome_table import OutcomeTable

_log = logging.getLogger("llm_router_plugin")

#: Flat metadata fields of earlier releases, one per outcome field and profile: ``<prefix>|<profile>``.
_PREFIX = {"quality": "q", "prompt_tokens": "pt", "completion_tokens": "ct", "cost_usd": "usd"}
#: Metadata field holding a record's outcomes as JSON: ``{profile: [quality, prompt, completion, usd]}``. One field,
#: not 44: Chroma writes a metadata row per field, and writes four times fewer rows this way (import speed).
OUTCOMES = "outcomes"
#: Records per Chroma call when the client does not say its maximum.
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
#: Queries per Chroma query call (a benchmark asks for thousands at once).
_QUERIES_PER_CALL = 1000
#: What a history store that cannot be reached raises: a Chroma server that went away or answers with an HTTP error
#: (chromadb's ``HttpClient`` speaks httpx), or an embedded store whose disk or socket failed (``OSError``, which
#: includes ``ConnectionError`` and ``TimeoutError``). Programming errors (``TypeError``, ``KeyError`` …) are not in it.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (httpx.HTTPError, OSError, sqlite3.OperationalError)
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

    def values(self) -> list[float]:
        """The fields in :data:`FIELDS` order, NaN where missing."""
        return [math.nan if (value := getattr(self, name)) is None else float(value) for name in FIELDS]


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
        """The Chroma metadata of the record: its task label and its outcomes (field :data:`OUTCOMES`)."""
        meta: dict[str, Any] = {"task": self.task} if self.task else {}
        outcomes = {profile: outcome.values() for profile, outcome in self.outcomes.items()}
        if outcomes:
            meta[OUTCOMES] = encode_outcomes(outcomes)
        return meta


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


def encode_outcomes(outcomes: Mapping[str, Sequence[float]]) -> str:
    """The :data:`OUTCOMES` metadata value of a record's outcomes (NaN written as ``null``)."""
    return json.dumps({p: [None if math.isnan(v) else v for v in values] for p, values in outcomes.items()},
                      separators=(",", ":"))


def decode_outcomes(meta: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """A record's outcomes from its Chroma metadata (either format): profile → values, NaN where missing."""
    out: dict[str, list[float]] = {}
    for key, value in (meta or {}).items():  # flat fields of earlier releases
        prefix, _, profile = key.partition("|")
        field = _FIELD_OF_PREFIX.get(prefix)
        if field is not None and profile and value is not None:
            out.setdefault(profile, [math.nan] * len(FIELDS))[field] = float(value)
    packed = (meta or {}).get(OUTCOMES)
    if isinstance(packed, str):
        for profile, values in json.loads(packed).items():
            row = out.setdefault(profile, [math.nan] * len(FIELDS))
            for field, value in enumerate(values):
                if value is not None:
                    row[field] = float(value)
    return out


_FIELD_OF_PREFIX = {prefix: FIELDS.index(name) for name, prefix in _PREFIX.items()}


class ChromaHistory:
    """History records in a Chroma collection (embedded on disk, or a Chroma server), with their outcomes also in a
    local :class:`~llm_router_plugin.outcome_table.OutcomeTable`.

    Args:
        path: folder of an embedded ``PersistentClient``; with ``host``, the folder of the local outcome table only.
            ``None`` with a server or a ``client``: the outcome table lives in memory (rebuilt by every process).
        collection: collection name.
        host: a Chroma server host (``HttpClient``); ``None`` = embedded. A server that does not answer yet is
            logged (naming host and port) and tried again on use, at most every :data:`CONNECT_RETRY_S` seconds;
            until it answers, every read and write of Chroma raises :class:`StoreNotConnectedError`.
        port: the server port.
        client: an already built Chroma client (takes precedence over ``path`` and ``host`` for Chroma).
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
        self._lock = threading.Lock()  # guards the exact index and the bookkeeping below
        # Held across a write and the statistics it changes (the lock above guards the caches only).
        self._write_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._connect_due = -math.inf
        self._connect_failure = ""
        self._exact_max = exact_search_max
        self._exact: ExactIndex | None = None
        self._exact_seen = 0.0  # newest write time the exact index holds
        self._synced = -math.inf  # when the outcome table and the exact index were last compared with the store
        self._load_lock = threading.Lock()  # held while a cache is loaded from the store
        # Set while the store is unreachable, so that an outage logs one warning, not one per query.
        self._unreachable = False
        self._client: Any = client
        self._collection: Any = None
        self._address: str | None = None
        self._table_path: Path | None = None
        if path is not None:
            folder = Path(path)
            private_dir(folder)
            suffix = "" if host is None or client is not None else f"-{host}-{port}"
            self._table_path = folder / f"llm-router-outcomes-{collection}{suffix}.sqlite3"
        self._table = OutcomeTable(self._table_path)
        if client is None and host:
            self._address = f"{host}:{port}"
            self._connect = partial(chromadb.HttpClient, host=host, port=port, settings=settings)
            self._first_connect()
            return
        if client is None:
            if path is None:
                raise ValueError("path: give a folder for the embedded store, or a Chroma server host")
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
        """Open (or create) the collection on the client."""
        client = self._client if self._client is not None else self._connect()
        # embedding_function=None: Chroma's default would download a model; we always pass our own vectors.
        collection = client.get_or_create_collection(
            self._name, embedding_function=None, configuration={"hnsw": {"space": "cosine", "num_threads": 1}}
        )
        if self._table.get("collection") is None and self._table.count() == 0 and collection.count() == 0:
            # A new table of a new collection is in step with it; the writes through this object keep it so.
            self._table.write([], [], None, bookkeeping={"collection": str(collection.id)})
        with self._lock:
            self._client, self._collection = client, collection

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
        """The store a router config names: a Chroma server at ``chroma_host`` (its outcome table in
        ``<data_dir>/history-cache``), else ``<data_dir>/chroma``."""
        folder = Path(config.data_dir) / ("history-cache" if config.chroma_host else "chroma")
        return cls(folder, collection=config.collection, host=config.chroma_host, port=config.chroma_port,
                   exact_search_max=config.exact_search_max)

    @property
    def name(self) -> str:
        """The collection name."""
        return self._name

    def _batch(self) -> int:
        """Records per Chroma call: the client's maximum batch."""
        self._store()
        try:
            return int(self._client.get_max_batch_size())
        except AttributeError:  # a client without the call (an older or wrapped one)
            return _CHROMA_MAX_BATCH

    def count(self) -> int:
        """Number of records (the outcome table's count, kept in step with the store)."""
        return self._synced_table().count()

    def _synced_table(self) -> OutcomeTable:
        """The outcome table, brought up to date when due.

        Raises:
            StoreNotConnectedError: the table was never in step with the store, which cannot be read now: it knows
                nothing yet (a Chroma server not up when a router starts without a local table).
        """
        self._sync()
        if self._table.get("collection") is None:
            raise StoreNotConnectedError(self._connect_failure or f"history {self._name!r}: the store has not been "
                                         "read yet")
        return self._table

    def upsert(self, records: Sequence[HistoryRecord]) -> None:
        """Insert or replace records by id (so re-importing the same rows adds nothing).

        Args:
            records: the records; written in batches Chroma accepts.
        """
        if not records:
            return
        step = self._batch()
        for start in range(0, len(records), step):
            with self._write_lock:
                self._upsert_batch(records[start : start + step])

    def _upsert_batch(self, batch: Sequence[HistoryRecord]) -> None:
        """Write one batch to Chroma, then to the outcome table and the exact index."""
        texts = [r.text for r in batch]
        now = time.time()
        metadatas = [{**r.metadata(), WRITTEN_AT: now} for r in batch]
        vectors = np.asarray([r.embedding for r in batch], dtype=np.float32)
        ids = [r.id for r in batch]
        self._store().upsert(ids=ids, embeddings=vectors, metadatas=metadatas,
                             documents=texts if all(t is not None for t in texts) else None)
        self._table.write(ids, [{p: o.values() for p, o in r.outcomes.items()} for r in batch], vectors)
        with self._lock:
            if self._exact is not None:
                self._exact.upsert(ids, vectors)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        found: set[str] = set()
        step = self._batch()
        for start in range(0, len(ids), step):
            got = self._store().get(ids=list(ids[start : start + step]), include=[])
            found.update(got["ids"])
        return found

    def update_outcome(self, record_id: str, profile: str, outcome: ModelOutcome) -> None:
        """Merge ``outcome``'s present fields into one record's outcome for ``profile``.

        Raises:
            KeyError: no record has that id.
        """
        values = outcome.values()
        if all(math.isnan(v) for v in values):
            return  # nothing to merge
        with self._write_lock:  # read, merge and write as one step, or two merges lose one
            got = self._store().get(ids=[record_id], include=["metadatas", "embeddings"])
            if not got["ids"]:
                raise KeyError(f"record_id: no history record {record_id!r}")
            outcomes = decode_outcomes((got["metadatas"] or [None])[0])
            merged = outcomes.setdefault(profile, [math.nan] * len(FIELDS))
            for field, value in enumerate(values):
                if not math.isnan(value):
                    merged[field] = value
            self._store().update(ids=[record_id], metadatas=[{OUTCOMES: encode_outcomes(outcomes),
                                                              WRITTEN_AT: time.time()}])
            # A merge leaves the record count as it was: other processes watch this token to catch up.
            token = uuid.uuid4().hex
            self._store().modify(metadata={MERGE_TOKEN: token})
            # The whole record as the store holds it: the table may not have seen it yet (written on another host).
            vector = np.asarray(got["embeddings"], dtype=np.float32).reshape(1, -1)
            self._table.write([record_id], [outcomes], vector, bookkeeping={"merge": token})

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
        table = self._synced_table()
        exact = self._exact_for(table.count())
        sims = np.full((n, k), np.nan)
        ids: list[list[str]] = [[] for _ in range(n)]
        total = len(exact) if exact is not None else table.count()
        width = min(k, total)
        if n and width:
            vectors = np.asarray(embeddings, dtype=np.float32)
            if exact is not None:
                ids, similarity = exact.search(vectors, width)
                sims[:, : similarity.shape[1]] = similarity
            else:
                self._query(vectors, width, ids, sims)
        flat = [record_id for row in ids for record_id in row]
        found = table.outcomes(flat, profiles)
        outcomes = np.full((n, k, len(profiles), len(FIELDS)), np.nan)
        offset = 0
        for row, row_ids in enumerate(ids):
            outcomes[row, : len(row_ids)] = found[offset : offset + len(row_ids)]
            offset += len(row_ids)
        return Neighbours(ids, sims, outcomes, tuple(profiles))

    def _query(self, vectors: np.ndarray, width: int, ids: list[list[str]], sims: np.ndarray) -> None:
        """Fill ``ids`` and ``sims`` from Chroma's HNSW index: ids and distances only (outcomes come from the table)."""
        for start in range(0, len(vectors), _QUERIES_PER_CALL):
            result = self._store().query(query_embeddings=vectors[start : start + _QUERIES_PER_CALL],
                                         n_results=width, include=["distances"])
            for offset, row_ids in enumerate(result["ids"]):
                row = start + offset
                ids[row] = list(row_ids)
                sims[row, : len(row_ids)] = 1.0 - np.asarray(result["distances"][offset], dtype=float)

    def _exact_for(self, total: int) -> ExactIndex | None:
        """The exact index while ``total`` records fit in it (loaded on first use); else ``None`` (HNSW answers)."""
        if not 0 < total <= self._exact_max:
            with self._lock:
                self._exact = None
            return None
        with self._lock:
            index = self._exact
        if index is None:
            with self._load_lock:  # one load for the queries that arrive together, not one each
                with self._lock:
                    index = self._exact
                if index is None:
                    try:
                        index = self._load_exact()
                    except Exception as exc:  # e.g. another process writing the embedded store: HNSW answers
                        _log.warning("exact history index not loaded (%s); using Chroma's index for this query", exc)
                        return None
        return index

    def _sync(self) -> None:
        """Every :data:`EXACT_RECHECK_S` seconds (and on first use): compare the outcome table and the exact index with
        the store, and bring them up to date (other processes write too).

        What other processes wrote or merged is read by its write time; a table or index that still differs from the
        store afterwards (missing, from another collection, records written without a write time) is rebuilt. While
        the store cannot be read, the table and the index serve as they are.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._synced < EXACT_RECHECK_S:
                return
        with self._load_lock:  # one sync for the queries that arrive together, not one each
            with self._lock:
                if now - self._synced < EXACT_RECHECK_S:
                    return
            try:
                self._sync_now()
            except Exception as exc:
                # chromadb's own errors: e.g. an embedded store another process is writing (not made for that)
                if not _is_unreachable(exc) and not type(exc).__module__.startswith("chromadb"):
                    raise
                self._note_unreachable("size check", exc)
                if self._table.get("collection") is None:
                    return  # nothing to serve from meanwhile: try at the next use (connecting is rate-limited)
            else:
                self._unreachable = False
            with self._lock:
                self._synced = now

    def _sync_now(self) -> None:
        cached = self._store()
        collection = self._client.get_collection(self._name, embedding_function=None)
        if collection.id != cached.id:  # deleted and created again (e.g. by another host): the handle went stale
            with self._lock:
                self._collection, self._exact = collection, None
        total = int(collection.count())
        token = str((collection.metadata or {}).get(MERGE_TOKEN) or "")
        identity = str(collection.id)
        known = self._table.get("collection") == identity  # a table of this collection (not missing, not replaced)
        table_stale = known and (self._table.count() != total or (self._table.get("merge") or "") != token)
        with self._lock:
            index = self._exact
        index_stale = index is not None and len(index) != total
        if table_stale or index_stale:
            self._catch_up(table_stale, index if index_stale else None)
        if not known or self._table.count() != total:
            self._rebuild(identity, total)
        elif (self._table.get("merge") or "") != token:
            self._table.write([], [], None, bookkeeping={"merge": token})
        with self._lock:
            if self._exact is not None and len(self._exact) != total:
                self._exact = None  # records it cannot place (written without a write time): loaded anew on use

    def _pages(self, include: list[str], where: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every record (matching ``where``) of the store, in pages of the client's maximum batch."""
        step, offset = self._batch(), 0
        while True:
            page = self._store().get(where=where, include=include, limit=step, offset=offset)
            if page["ids"]:
                yield page
            if len(page["ids"]) < step:
                return
            offset += step

    def _catch_up(self, table: bool, index: ExactIndex | None) -> None:
        """Bring the table (if ``table``) and ``index`` to the records written since each last looked."""
        seen = [float(self._table.get("written_seen") or 0.0)] if table else []
        with self._lock:
            seen += [self._exact_seen] if index is not None else []
        since = min(seen) - CATCH_UP_SLACK_S
        newest = since
        for page in self._pages(["embeddings", "metadatas"], where={WRITTEN_AT: {"$gte": since}}):
            vectors = _vectors(page)
            metadatas = page["metadatas"] or [None] * len(page["ids"])
            newest = max(newest, _newest(metadatas))
            if table:
                self._table.write(page["ids"], [decode_outcomes(m) for m in metadatas], vectors)
            if index is not None:
                with self._lock:
                    index.upsert(page["ids"], vectors)
        # Moved on only once every page was read: pages come in insertion order, not by write time, so a catch-up
        # cut short must read the same span again.
        if table:
            self._table.write([], [], None, bookkeeping={"written_seen": repr(max(newest, seen[0]))})
        if index is not None:
            with self._lock:
                self._exact_seen = max(self._exact_seen, newest)

    def _rebuild(self, identity: str, total: int) -> None:
        """Build the outcome table anew from every record of the store (a missing or stale table).

        Processes sharing the table file take turns (a file lock): after an upgrade every proxy worker finds the table
        missing, and one builds it while the others wait and then find it in step.
        """
        with _rebuild_lock(self._table_path):
            if self._table.get("collection") == identity and self._table.count() == total:
                return
            self._build(identity, total)

    def _build(self, identity: str, total: int) -> None:
        _log.info("history store: building the local outcome table from the %d records of %r (once)", total,
                  self._name)
        centres = self._table.centres()
        self._table.clear()
        newest = 0.0
        for page in self._pages(["embeddings", "metadatas"]):
            vectors = _vectors(page)
            if centres is not None:  # kept if the records are still of their width (else labelled when asked)
                if centres.shape[1] == vectors.shape[1]:
                    self._table.relabel(centres, [])
                centres = None
            metadatas = page["metadatas"] or [None] * len(page["ids"])
            newest = max(newest, _newest(metadatas))
            self._table.write(page["ids"], [decode_outcomes(m) for m in metadatas], vectors)
        self._table.write([], [], None, bookkeeping={"collection": identity, "written_seen": repr(newest)})

    def _load_exact(self) -> ExactIndex:
        """Load the exact index (ids and embeddings) from the store."""
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        newest = 0.0
        for page in self._pages(["embeddings", "metadatas"]):
            ids += page["ids"]
            vectors.append(_vectors(page))
            newest = max(newest, _newest(page["metadatas"] or []))
        index = ExactIndex(ids, np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))
        with self._lock:
            self._exact, self._exact_seen = index, max(self._exact_seen, newest)
        return index

    def _note_unreachable(self, check: str, exc: Exception) -> None:
        """Log that the store cannot be reached, once per outage (the next successful check ends it)."""
        if self._unreachable:
            return
        self._unreachable = True
        _log.warning("history store unreachable (%s failed: %s); serving neighbours and means from memory and the "
                     "local outcome table, which may miss outcomes written elsewhere until it is back", check, exc)

    def profile_means(self, profiles: Sequence[str]) -> np.ndarray:
        """Each profile's mean outcome over the whole history, shape ``(len(profiles), len(FIELDS))`` (NaN = none).

        Read from the outcome table's running statistics: no scan of the history.
        """
        stats = self._synced_table().statistics(profiles)
        counts = stats.counts[0]
        return np.where(counts > 0, stats.sums[0] / np.maximum(counts, 1), np.nan)

    def profiles(self) -> list[str]:
        """Every profile that has at least one outcome in the store."""
        return self._synced_table().profiles()

    def export(self) -> tuple[list[str], np.ndarray, list[str | None], list[str | None]]:
        """Every record's id, embedding, text and task label (``None`` where the store keeps none), by id."""
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        texts: list[str | None] = []
        tasks: list[str | None] = []
        for page in self._pages(["embeddings", "documents", "metadatas"]):
            ids += page["ids"]
            vectors.append(_vectors(page))
            texts += page["documents"] or [None] * len(page["ids"])
            tasks += [(meta or {}).get("task") for meta in page["metadatas"] or [None] * len(page["ids"])]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
        return [ids[i] for i in order], matrix[order], [texts[i] for i in order], [tasks[i] for i in order]

    def cluster_stats(self, centres: np.ndarray, profiles: Sequence[str]) -> ClusterStats:
        """Every profile's outcome statistics per cluster (each record in the cluster of its nearest centre).

        Kept in the outcome table for one set of centres at a time; other centres relabel every record once.

        Args:
            centres: normalised cluster centres, shape ``(K, dimension)``.
            profiles: the profiles.

        Returns:
            Sums, counts and largest values, each of shape ``(K, len(profiles), len(FIELDS))``.
        """
        self.label_clusters(centres)
        stats = self._table.statistics(profiles)
        return ClusterStats(stats.sums[1:], stats.counts[1:], stats.maxes[1:])

    def label_clusters(self, centres: np.ndarray) -> None:
        """Keep the statistics of these clusters from now on: records are labelled as they are written.

        Called before an import, so that no pass over the history is needed later; on centres other than the table's,
        every stored record is labelled anew (its embeddings read back from the store a page at a time), once.

        Args:
            centres: normalised cluster centres, shape ``(K, dimension)``.

        Raises:
            StoreNotConnectedError: the table was never in step with the store, which cannot be read now.
        """
        centres = np.asarray(centres, dtype=np.float32)
        self._synced_table()
        if not _same(self._table.centres(), centres):
            with self._load_lock:  # one relabelling for the queries that arrive together, not one each
                if not _same(self._table.centres(), centres):
                    self._relabel(centres)

    def _relabel(self, centres: np.ndarray) -> None:
        with self._lock:
            index = self._exact
        if index is not None and len(index) == self._table.count():
            self._table.relabel(centres, [index.rows()])
            return
        pages = ((page["ids"], _vectors(page))
                 for page in self._pages(["embeddings"]))
        self._table.relabel(centres, pages)


def _vectors(page: Mapping[str, Any]) -> np.ndarray:
    """The embeddings of a page Chroma returned, as float32 rows."""
    return np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1)


def _newest(metadatas: Sequence[Mapping[str, Any] | None]) -> float:
    """The newest write time among records' metadata (0 for none)."""
    return max((float((m or {}).get(WRITTEN_AT, 0.0)) for m in metadatas), default=0.0)


@contextlib.contextmanager
def _rebuild_lock(table: Path | None) -> Iterator[None]:
    """Hold an exclusive lock beside the table file (nothing for a table in memory, or where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent rebuilds stay correct, each only repeats the work
        fcntl = None  # type: ignore[assignment]
    if table is None or fcntl is None:
        yield
        return
    with table.with_name(table.name + ".rebuild-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _same(stored: np.ndarray | None, centres: np.ndarray) -> bool:
    # Within float32 noise: the same profile set's centres recomputed by another process may differ in the last bits.
    return stored is not None and stored.shape == centres.shape and bool(np.allclose(stored, centres, atol=1e-5))
