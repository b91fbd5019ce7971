import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import HashingEmbedder, RouterConfig
from llm_router_plugin.embedding_batch import BatchingEmbedder, configured_embedder

#: A bound for a test that would otherwise hang on a broken batcher; never reached when it works.
HANG_S = 60


class CountingEmbedder(HashingEmbedder):
    """Records every forward pass; the first one waits for ``release`` so that later callers queue behind it."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__(16)
        self.passes: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._fail_on = fail_on

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.passes.append(list(texts))
        self.started.set()
        assert self.release.wait(HANG_S)
        if self._fail_on in texts:
            raise RuntimeError(f"cannot embed {self._fail_on}")
        return super().embed(texts)


def reference(texts: Sequence[str]) -> np.ndarray:
    return HashingEmbedder(16).embed(texts)


async def gather_behind_first(batcher: BatchingEmbedder, inner: CountingEmbedder,
                              calls: list[list[str]]) -> list[np.ndarray | BaseException]:
    """Run ``calls`` concurrently, the later ones all queued while the first one's pass is held."""
    first = asyncio.create_task(batcher.aembed(calls[0]))
    await asyncio.to_thread(inner.started.wait, HANG_S)
    rest = [asyncio.create_task(batcher.aembed(texts)) for texts in calls[1:]]
    await asyncio.sleep(0)  # every task runs up to its await: its texts are queued
    inner.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def test_concurrent_aembed_calls_share_a_forward_pass_and_each_gets_its_own_rows() -> None:
    inner = CountingEmbedder()
    batcher = BatchingEmbedder(inner, window_ms=0, max_batch=32)
    calls = [[f"query number {i} about topic {i % 3}"] for i in range(20)]
    results = await gather_behind_first(batcher, inner, calls)
    assert inner.passes == [calls[0][0:1], [texts[0] for texts in calls[1:]]]
    for texts, rows in zip(calls, results, strict=True):
        assert isinstance(rows, np.ndarray)
        np.testing.assert_allclose(rows, reference(texts))


async def test_a_call_with_several_texts_gets_its_rows_in_order_and_a_large_call_is_not_split() -> None:
    inner = CountingEmbedder()
    batcher = BatchingEmbedder(inner, window_ms=0, max_batch=4)
    large = [f"long document {i}" for i in range(6)]
    calls = [["first"], ["alpha beta", "gamma", "delta epsilon"], ["zeta"], large, ["eta"]]
    results = await gather_behind_first(batcher, inner, calls)
    # FIFO: the batch stops at the call that would overflow max_batch; that call opens the next pass, whole.
    assert inner.passes == [["first"], ["alpha beta", "gamma", "delta epsilon", "zeta"], large, ["eta"]]
    for texts, rows in zip(calls, results, strict=True):
        assert isinstance(rows, np.ndarray)
        np.testing.assert_allclose(rows, reference(texts))


async def test_batches_hold_at_most_max_batch_texts_in_arrival_order() -> None:
    inner = CountingEmbedder()
    batcher = BatchingEmbedder(inner, window_ms=0, max_batch=4)
    calls = [[f"text {i}"] for i in range(10)]
    await gather_behind_first(batcher, inner, calls)
    assert inner.passes == [["text 0"], [f"text {i}" for i in range(1, 5)], [f"text {i}" for i in range(5, 9)],
                            ["text 9"]]


async def test_an_error_reaches_every_caller_of_its_batch_and_not_the_next_batch() -> None:
    inner = CountingEmbedder(fail_on="poison")
    batcher = BatchingEmbedder(inner, window_ms=0, max_batch=3)
    calls = [["first"], ["a"], ["poison"], ["b"], ["c"], ["d"]]
    results = await gather_behind_first(batcher, inner, calls)
    assert inner.passes == [["first"], ["a", "poison", "b"], ["c", "d"]]
    assert isinstance(results[0], np.ndarray)
    for failed in results[1:4]:
        assert isinstance(failed, RuntimeError) and "poison" in str(failed)
    for texts, rows in zip(calls[4:], results[4:], strict=True):
        assert isinstance(rows, np.ndarray)
        np.testing.assert_allclose(rows, reference(texts))
    np.testing.assert_allclose(await batcher.aembed(["after"]), reference(["after"]))  # the worker is still serving


def test_concurrent_embed_calls_from_threads_share_a_forward_pass() -> None:
    inner = CountingEmbedder()
    batcher = BatchingEmbedder(inner, window_ms=0, max_batch=32)
    texts = [f"thread query {i}" for i in range(8)]
    with ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(batcher.embed, texts[:1])
        assert inner.started.wait(HANG_S)
        rest = [pool.submit(batcher.embed, [text]) for text in texts[1:]]
        while batcher._queue.qsize() < len(rest):  # every thread has queued its text behind the held pass
            threading.Event().wait(0.001)
        inner.release.set()
        results = [future.result(HANG_S) for future in [first, *rest]]
    # One pass for the held call, one for all the others; threads queue in whatever order the scheduler runs them.
    assert len(inner.passes) == 2 and inner.passes[0] == texts[:1] and sorted(inner.passes[1]) == texts[1:]
    for text, rows in zip(texts, results, strict=True):
        np.testing.assert_allclose(rows, reference([text]))


def test_a_lone_call_does_not_wait_for_the_window() -> None:
    inner = CountingEmbedder()
    inner.release.set()
    batcher = BatchingEmbedder(inner, window_ms=3_600_000)  # an hour: a call that waited it would never return
    with ThreadPoolExecutor(1) as pool:
        rows = pool.submit(batcher.embed, ["alone"]).result(HANG_S)
    np.testing.assert_allclose(rows, reference(["alone"]))


def test_it_is_an_embedder_with_the_wrapped_name_and_dimension() -> None:
    batcher = BatchingEmbedder(HashingEmbedder(24))
    assert (batcher.name, batcher.dimension) == ("hashing-24", 24)
    assert batcher.embed([]).shape == (0, 24)


@pytest.mark.parametrize(("kwargs", "field"), [({"window_ms": -1.0}, "window_ms"),
                                               ({"window_ms": float("nan")}, "window_ms"),
                                               ({"max_batch": 0}, "max_batch")])
def test_bad_settings_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BatchingEmbedder(HashingEmbedder(8), **kwargs)  # type: ignore[arg-type]


def test_a_config_turns_batching_on_with_a_batch_size_above_one(tmp_path: Path) -> None:
    settings = {"deployments": [{"name": "a"}], "data_dir": str(tmp_path), "embedding_model": "hashing-32"}
    assert isinstance(configured_embedder(RouterConfig.from_dict(settings)), HashingEmbedder)
    batched = configured_embedder(RouterConfig.from_dict({**settings, "embedding_batch_size": 8,
                                                           "embedding_batch_ms": 1.5}))
    assert isinstance(batched, BatchingEmbedder) and batched.name == "hashing-32"
    assert (batched._max_batch, batched._window_s) == (8, 0.0015)

