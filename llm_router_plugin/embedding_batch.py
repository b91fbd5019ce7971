"""Micro-batched embedding: concurrent callers share one forward pass.

A router embeds one query per call. Embedding one text at a time leaves most of a forward pass's cost in fixed
overhead, so concurrent routes (``aroute`` on an event loop, or ``route`` from the LiteLLM proxy's worker threads)
gain little from running side by side. :class:`BatchingEmbedder` queues every call, and one worker thread embeds
what is queued in one forward pass and hands each caller its own rows.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llm_router_plugin.embedding import Embedder, WrappedEmbedder, make_embedder

if TYPE_CHECKING:
    from llm_router_plugin.config import RouterConfig


@dataclass
class _Call:
    """One caller's texts and where its rows go."""

    texts: list[str]
    future: Future[np.ndarray]


class BatchingEmbedder(WrappedEmbedder):
    """Wraps an :class:`~llm_router_plugin.embedding.Embedder` so that concurrent calls share forward passes.

    Calls from any thread or event loop are queued; a worker thread takes the queued calls (up to ``max_batch``
    texts) and embeds them in one call of the wrapped embedder, off every event loop. A call of more than
    ``max_batch`` texts is embedded alone and whole. An exception of the wrapped embedder reaches every caller of
    that batch, and the next batch is embedded as usual.

    The worker waits up to ``window_ms`` for more calls only when the batch before held more than one call: a lone
    caller (nobody else routing) is embedded at once, while under concurrent load the callers that arrive just after
    a pass starts are gathered into the next one instead of each starting a pass of its own.

    Args:
        inner: the embedder doing the forward passes (its thread settings apply).
        window_ms: how long a batch may wait for more callers under load, in milliseconds (0 = never waits; calls
            queued while a pass runs still share the next one).
        max_batch: most texts per forward pass.

    Raises:
        ValueError: ``window_ms`` is negative or not finite, or ``max_batch`` is below 1 (the message names it).
    """

    def __init__(self, inner: Embedder, *, window_ms: float = 2.0, max_batch: int = 32) -> None:
        if not math.isfinite(window_ms) or window_ms < 0:
            raise ValueError(f"window_ms: must be a finite number of milliseconds ≥ 0, got {window_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        super().__init__(inner)
        self._window_s = window_ms / 1000
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._carried: _Call | None = None  # the call that did not fit the last batch: first in the next one
        self._last_calls = 0
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in a shared forward pass, blocking the calling thread until its rows are ready.

        Args:
            texts: the texts.

        Returns:
            Array of shape ``(len(texts), dimension)``, rows in the order of ``texts``.

        Raises:
            Exception: whatever the wrapped embedder raised for the batch these texts were in.
        """
        if not texts:
            return self.inner.embed(texts)
        return self._submit(texts).result()

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed`: the event loop keeps serving while the batch is embedded."""
        if not texts:
            return await self.inner.aembed(texts)
        return await asyncio.wrap_future(self._submit(texts))

    def _submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        call = _Call(list(texts), Future())
        self._queue.put(call)
        self._ensure_worker()
        return call.future

    def _ensure_worker(self) -> None:
        # Started on first use (building a router starts no thread), and again in a forked child, which inherits the
        # queue but not the thread.
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            batch = self._collect()
            self._last_calls = len(batch)
            self._embed_batch(batch)

    def _collect(self) -> list[_Call]:
        """The next batch: the first queued call, then whatever else is queued or arrives within the window."""
        first, self._carried = self._carried or self._queue.get(), None
        batch, size = [first], len(first.texts)
        deadline = time.monotonic() + (self._window_s if self._last_calls > 1 else 0.0)
        while size < self._max_batch:
            try:
                wait = deadline - time.monotonic()
                call = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if size + len(call.texts) > self._max_batch:
                self._carried = call
                break
            batch.append(call)
            size += len(call.texts)
        return batch

    def _embed_batch(self, batch: list[_Call]) -> None:
        # A caller that gave up (a cancelled task) is dropped before the pass, not embedded for nobody.
        live = [call for call in batch if call.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [text for call in live for text in call.texts]
        try:
            vectors = np.asarray(self.inner.embed(texts), dtype=np.float32)
            if vectors.shape[0] != len(texts):
                raise ValueError(f"embedder {self.name} returned {vectors.shape[0]} rows for {len(texts)} texts")
        except Exception as exc:  # every caller of this batch gets it; the worker goes on with the next batch
            for call in live:
                call.future.set_exception(exc)
            return
        start = 0
        for call in live:
            call.future.set_result(vectors[start : start + len(call.texts)])
            start += len(call.texts)


def unbatched_embedder(config: RouterConfig) -> Embedder:
    """The embedder a config names, without micro-batching: for callers that embed many texts per call themselves
    (an import, a vector pack, onboarding).

    Args:
        config: the router config (``embedding_model``, ``embedding_threads``, ``embedding_keep``,
            ``embedding_backend``).

    Returns:
        The embedder (sentence-transformers models load lazily on first use).
    """
    return make_embedder(config.embedding_model, config.embedding_threads, config.embedding_keep,
                         config.embedding_backend)


def configured_embedder(config: RouterConfig) -> Embedder:
    """The embedder a config names, micro-batched unless ``embedding_batch_size`` is 1.

    Args:
        config: the router config (``embedding_model``, ``embedding_threads``, ``embedding_keep``,
            ``embedding_backend``, ``embedding_batch_ms``, ``embedding_batch_size``).

    Returns:
        The embedder (sentence-transformers models load lazily on first use).
    """
    embedder = unbatched_embedder(config)
    if config.embedding_batch_size == 1:
        return embedder
    return BatchingEmbedder(embedder, window_ms=config.embedding_batch_ms, max_batch=config.embedding_batch_size)
