"""Vector packs: a data file's prompt embeddings, computed once and read by every import of it.

Embedding the shipped RouterBench sample takes minutes of CPU with MiniLM (about 70 ms a prompt on one core), longer
than everything else a first run does. A pack is a read-only ``.npz`` of one embedder's vectors keyed, like the
embedding cache, by the SHA-256 of each text: an import takes the vectors of the texts it holds and embeds only the
others. The package ships the pack of ``routerbench_sample.csv.gz`` for the default embedder
(``llm-router vectors`` rebuilds it); ``llm-router import --vectors`` reads packs made for other files, so a team
embeds its history once and imports it into every store (a host, a test, a fresh data folder) in seconds.

A pack is only used for the embedder it names: vectors of another model, or of the same model cutting long texts at
the other end, are never mixed in.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_router_plugin.dataset import bundled_path
from llm_router_plugin.embedding import Embedder
from llm_router_plugin.embedding_cache import KeyedEmbedder, text_key

#: The packs shipped in the package (``llm_router_plugin/data``).
SHIPPED = ("routerbench_sample.vectors.npz",)
#: How far a vector's length may be from 1 (embedders return unit rows; anything else is a damaged file).
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VectorPack:
    """One embedder's vectors of a set of texts.

    Attributes:
        model: the embedder's name (e.g. ``all-MiniLM-L6-v2@tail``).
        keys: SHA-256 digests of the texts, shape ``(n, 32)``, uint8 (not numpy's ``S32``, which drops a digest's
            trailing zero bytes).
        vectors: unit rows, shape ``(n, dimension)``, float32, in the order of ``keys``.
    """

    model: str
    keys: np.ndarray
    vectors: np.ndarray

    @classmethod
    def build(cls, texts: Iterable[str], embedder: Embedder, *, batch_size: int = 256) -> VectorPack:
        """Embed every distinct text once.

        Args:
            texts: the texts (duplicates are embedded once).
            embedder: the embedder; its name is the pack's.
            batch_size: texts per embedding call.

        Returns:
            The pack.

        Raises:
            ValueError: ``batch_size`` is below 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        distinct = list(dict.fromkeys(texts))
        parts = [np.asarray(embedder.embed(distinct[i : i + batch_size]), dtype=np.float32)
                 for i in range(0, len(distinct), batch_size)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)
        keys = np.frombuffer(b"".join(text_key(t) for t in distinct), dtype=np.uint8).reshape(-1, 32)
        return cls(embedder.name, keys, vectors)

    @classmethod
    def load(cls, path: str | Path) -> VectorPack:
        """Read and check a pack file.

        Args:
            path: the ``.npz`` file.

        Returns:
            The pack.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a pack, or a damaged one (the message names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vectors: no such file {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                model, keys, vectors = str(data["model"]), data["keys"], data["vectors"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"vectors: {path} is not a vector pack ({exc})") from None
        pack = cls(model, keys, vectors)
        pack._check(path)
        return pack

    def _check(self, path: Path) -> None:
        if not self.model or self.keys.dtype != np.uint8 or self.keys.ndim != 2 or self.keys.shape[1] != 32:
            raise ValueError(f"vectors: {path} has no model name or no SHA-256 text keys")
        if self.vectors.dtype != np.float32 or self.vectors.ndim != 2 or len(self.vectors) != len(self.keys):
            raise ValueError(f"vectors: {path} holds {self.vectors.shape} {self.vectors.dtype} vectors for "
                             f"{len(self.keys)} keys")
        norms = np.linalg.norm(self.vectors, axis=1)
        if not np.all(np.isfinite(self.vectors)) or np.any(np.abs(norms - 1.0) > _NORM_TOLERANCE):
            raise ValueError(f"vectors: {path} has vectors that are not finite unit rows")

    def save(self, path: str | Path) -> None:
        """Write the pack (compressed ``.npz``).

        Args:
            path: the file; written whole or not at all.
        """
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as fh:
            np.savez_compressed(fh, model=np.array(self.model), keys=self.keys, vectors=self.vectors)
        partial.replace(path)

    def lookup(self, keys: Iterable[bytes]) -> dict[bytes, np.ndarray]:
        """The vectors of those ``keys`` the pack holds."""
        return {key: self.vectors[self._index[key]] for key in keys if key in self._index}

    @functools.cached_property
    def _index(self) -> dict[bytes, int]:
        return {key.tobytes(): i for i, key in enumerate(self.keys)}


def shipped_packs() -> list[VectorPack]:
    """The packs shipped in the package."""
    return [VectorPack.load(bundled_path(name)) for name in SHIPPED]


class PackedEmbedder(KeyedEmbedder):
    """Takes the vectors of the texts the packs hold; the wrapped embedder computes the others.

    Args:
        inner: the embedder (typically a :class:`~llm_router_plugin.embedding_cache.CachingEmbedder`); only packs
            made by an embedder of its name are used.
        packs: the packs.
    """

    def __init__(self, inner: Embedder, packs: Sequence[VectorPack]) -> None:
        super().__init__(inner)
        # The name says model and cut (it is the cache's key too); asking the dimension would load the model.
        self.packs = [pack for pack in packs if pack.model == inner.name]

    def _find(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for pack in self.packs:
            found.update(pack.lookup(key for key in keys if key not in found))
        return found
