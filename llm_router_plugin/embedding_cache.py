"""A persistent embedding cache: no text is embedded twice by the same model.

Importing a history file embeds every prompt, minutes of CPU for the shipped sample with MiniLM. The vectors are
kept in a SQLite file (by default ``<data_dir>/embeddings.sqlite3``), keyed by the SHA-256 of the text and the
embedder's name, as float32 blobs, so that importing again into a new store, another data folder sharing the file,
or the examples reuse them.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_router_plugin._files import private_dir, private_file
from llm_router_plugin.embedding import Embedder, WrappedEmbedder

if TYPE_CHECKING:
    from llm_router_plugin.config import RouterConfig

#: File name of the cache in a router's data folder.
CACHE_FILE = "embeddings.sqlite3"
#: Keys per SELECT (below SQLite's bound on query parameters).
_READ_CHUNK = 500
#: How far a cached vector's length may be from 1 (embedders return unit rows; a damaged blob rarely is one).
_NORM_TOLERANCE = 1e-3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    text_sha256 BLOB NOT NULL,
    dimension INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, text_sha256)
) WITHOUT ROWID
"""


def text_key(text: str) -> bytes:
    """The key of a text's vector: the SHA-256 of its UTF-8 bytes (lone surrogates kept, not an error)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()


def cache_path(config: RouterConfig) -> Path:
    """The embedding cache a config names: ``embedding_cache``, else ``<data_dir>/embeddings.sqlite3``."""
    return config.embedding_cache or Path(config.data_dir) / CACHE_FILE


class KeyedEmbedder(WrappedEmbedder):
    """Base of embedders that find some vectors by their text's key (:func:`text_key`) and have the wrapped embedder
    compute the others, in one call; subclasses say where vectors are found (:meth:`_find`) and kept (:meth:`_keep`).

    Args:
        inner: the embedder that computes the vectors not found.
    """

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: the vectors found, the wrapped embedder for the rest (each distinct text once).

        Args:
            texts: the texts.

        Returns:
            Array of shape ``(len(texts), dimension)``, rows in the order of ``texts``.
        """
        if not texts:
            return self.inner.embed(texts)
        keys = [text_key(text) for text in texts]
        found = self._find(keys)
        missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
        if missing:
            vectors = np.asarray(self.inner.embed(list(missing.values())), dtype=np.float32)
            computed = dict(zip(missing, vectors, strict=True))
            self._keep(computed)
            found.update(computed)
        return np.stack([found[key] for key in keys])

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed`: the lookups and the model run in a worker thread."""
        return await asyncio.to_thread(self.embed, texts)

    def _find(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The vectors known for ``keys`` (a subset of them)."""
        raise NotImplementedError

    def _keep(self, vectors: dict[bytes, np.ndarray]) -> None:
        """Keep vectors the wrapped embedder just computed (by default nowhere)."""


class CachingEmbedder(KeyedEmbedder):
    """Wraps an :class:`~llm_router_plugin.embedding.Embedder`, keeping every vector it computes in SQLite.

    A call embeds only the texts the file has no valid vector for (each distinct text once), in one call of the
    wrapped embedder, and stores them in one transaction; a warm cache never loads the model. A stored vector that is
    damaged (a blob of the wrong length, not finite, not of unit length) is ignored, embedded again and replaced.
    Several threads and processes may share the file: each call opens its own connection, and writers wait for
    each other (SQLite's lock, ``busy_timeout_s``).

    Args:
        inner: the embedder that computes missing vectors; its ``name`` is part of the key.
        path: the SQLite file (created, private to its owner, with its folder on first use).
        busy_timeout_s: how long a call waits for another writer's transaction.
    """

    def __init__(self, inner: Embedder, path: str | Path, *, busy_timeout_s: float = 60.0) -> None:
        super().__init__(inner)
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s

    def _find(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        with self._connect() as db:
            return self._read(db, set(keys))

    def _keep(self, vectors: dict[bytes, np.ndarray]) -> None:
        with self._connect() as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings (model, text_sha256, dimension, vector) VALUES (?, ?, ?, ?)",
                [(self.name, key, len(vector), vector.tobytes()) for key, vector in vectors.items()],
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            private_dir(self.path.parent)
            private_file(self.path)
        with closing(sqlite3.connect(self.path, timeout=self._busy_timeout_s)) as db:
            db.execute(_SCHEMA)
            yield db

    def _read(self, db: sqlite3.Connection, keys: set[bytes]) -> dict[bytes, np.ndarray]:
        wanted = list(keys)
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(wanted), _READ_CHUNK):
            chunk = wanted[start : start + _READ_CHUNK]
            rows = db.execute(
                f"SELECT text_sha256, dimension, vector FROM embeddings WHERE model = ? "
                f"AND text_sha256 IN ({', '.join('?' * len(chunk))})", [self.name, *chunk],
            )
            for key, dimension, blob in rows:
                vector = _vector(dimension, blob)
                if vector is not None:
                    found[key] = vector
        return found


def _vector(dimension: int, blob: bytes) -> np.ndarray | None:
    """A stored vector, or ``None`` if the blob is damaged (then the text is embedded again)."""
    if not isinstance(blob, bytes) or dimension < 1 or len(blob) != 4 * dimension:
        return None
    vector = np.frombuffer(blob, dtype=np.float32)
    if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > _NORM_TOLERANCE:
        return None
    return vector
