import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import HashingEmbedder, RouterConfig
from llm_router_plugin.embedding_cache import CachingEmbedder, cache_path


class CountingEmbedder(HashingEmbedder):
    """Counts the texts it embeds."""

    def __init__(self, dimension: int = 16) -> None:
        super().__init__(dimension)
        self.embedded: list[str] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.embedded.extend(texts)
        return super().embed(texts)


class RenamedEmbedder(CountingEmbedder):
    @property
    def name(self) -> str:
        return "another-model"


def test_a_cached_text_is_not_embedded_again(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    path = tmp_path / "cache" / "embeddings.sqlite3"
    first = CachingEmbedder(inner, path).embed(["alpha", "beta", "alpha"])
    assert inner.embedded == ["alpha", "beta"]  # a text repeated in one call is embedded once
    again = CachingEmbedder(inner, path).embed(["beta", "gamma", "alpha"])  # a new process would read the same file
    assert inner.embedded == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(first, HashingEmbedder(16).embed(["alpha", "beta", "alpha"]))
    np.testing.assert_allclose(again, HashingEmbedder(16).embed(["beta", "gamma", "alpha"]))
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_key_includes_the_embedder_name(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite3"
    CachingEmbedder(CountingEmbedder(), path).embed(["alpha"])
    other = RenamedEmbedder()
    CachingEmbedder(other, path).embed(["alpha"])
    assert other.embedded == ["alpha"]


@pytest.mark.parametrize("damage", ["short", "not finite", "not unit length"])
def test_a_damaged_vector_is_embedded_again_and_replaced(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "embeddings.sqlite3"
    CachingEmbedder(CountingEmbedder(), path).embed(["alpha", "beta"])
    blob = {"short": b"\x00\x00\x80?" * 3, "not finite": np.full(16, np.nan, dtype=np.float32).tobytes(),
            "not unit length": np.full(16, 2.0, dtype=np.float32).tobytes()}[damage]
    with sqlite3.connect(path) as db:
        db.execute("UPDATE embeddings SET vector = ?", (blob,))
    inner = CountingEmbedder()
    rows = CachingEmbedder(inner, path).embed(["alpha", "beta"])
    assert sorted(inner.embedded) == ["alpha", "beta"]
    np.testing.assert_allclose(rows, HashingEmbedder(16).embed(["alpha", "beta"]))
    repaired = CountingEmbedder()
    CachingEmbedder(repaired, path).embed(["alpha", "beta"])
    assert repaired.embedded == []


def _embed_in_process(path: str, start: int) -> int:
    texts = [f"text {i}" for i in range(start, start + 300)]
    CachingEmbedder(HashingEmbedder(16), path).embed(texts)
    return len(texts)


def test_concurrent_writers_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite3"
    # Overlapping ranges: threads and processes write some of the same keys at the same time.
    with ProcessPoolExecutor(2) as processes, ThreadPoolExecutor(4) as threads:
        futures = [processes.submit(_embed_in_process, str(path), start) for start in (0, 150)]
        futures += [threads.submit(_embed_in_process, str(path), start) for start in (100, 200, 250, 400)]
        assert sum(future.result() for future in futures) == 1800
    inner = CountingEmbedder()
    texts = [f"text {i}" for i in range(700)]
    rows = CachingEmbedder(inner, path).embed(texts)
    assert inner.embedded == []
    np.testing.assert_allclose(rows, HashingEmbedder(16).embed(texts))


def test_the_cache_lives_in_the_data_dir_unless_the_config_names_one(tmp_path: Path) -> None:
    config = RouterConfig.from_dict({"deployments": [{"name": "a"}], "data_dir": str(tmp_path)})
    assert cache_path(config) == tmp_path / "embeddings.sqlite3"
    shared = config.model_copy(update={"embedding_cache": tmp_path / "shared.sqlite3"})
    assert cache_path(shared) == tmp_path / "shared.sqlite3"
