"""Embeddings of a data file, computed once and cached on disk (keyed by the file's hash and the embedder)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_router_plugin.embedding import Embedder

#: Texts embedded per step of the progress bar.
BATCH = 64


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """A folder of ``.npy`` files, one per (data file content, embedder, row selection).

    Args:
        folder: where the arrays live (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path_for(self, source: str | Path, embedder: Embedder, texts: Sequence[str]) -> Path:
        """The cache file of these texts of ``source`` under ``embedder``."""
        # The texts' hash keeps two selections of rows from one file apart (e.g. after a reader change).
        texts_hash = hashlib.sha256("\0".join(texts).encode("utf-8", errors="replace")).hexdigest()[:12]
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", embedder.name).strip("_")[-60:]
        return self.folder / f"{file_digest(source)[:16]}-{texts_hash}-{model}.npy"

    def embeddings(self, source: str | Path, texts: Sequence[str], embedder: Embedder,
                   progress: bool = True) -> np.ndarray:
        """The embeddings of ``texts`` (rows of ``source``), from the cache or computed and stored.

        Args:
            source: the data file the texts come from.
            texts: the texts, in row order.
            embedder: the embedder.
            progress: show a progress bar while embedding.

        Returns:
            Float32 array of shape ``(len(texts), dimension)``.
        """
        path = self.path_for(source, embedder, texts)
        if path.exists():
            cached = np.load(path)
            # Only the row count is checked: asking a model for its dimension would load it, which a warm cache avoids.
            if cached.ndim == 2 and len(cached) == len(texts):
                return cached
        vectors = _embed(texts, embedder, progress, f"embedding {Path(source).name}")
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(partial, vectors)
        partial.replace(path)  # atomic: a crashed run never leaves a truncated cache entry
        return vectors


def _embed(texts: Sequence[str], embedder: Embedder, progress: bool, label: str) -> np.ndarray:
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(texts), desc=label, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), BATCH):
            batch = list(texts[start : start + BATCH])
            parts.append(np.asarray(embedder.embed(batch), dtype=np.float32))
            bar.update(len(batch))
    if not parts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    return np.concatenate(parts)
