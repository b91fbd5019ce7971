"""Per-stage wall and CPU times of a route, for benchmarks (``llm-router bench-speed``).

The router marks its stages with :func:`stage`; nothing is recorded unless the caller collects::

    with collect() as times:
        router.route("What is 2 + 2?")
    times.totals()  # stage name → summed wall and CPU seconds

Off (no :func:`collect` around the call), a stage costs one context-variable read. A collection follows the
context, so it reaches the worker thread of :meth:`Router.aroute <llm_router_plugin.Router.aroute>` and no other
concurrent call. CPU is the calling thread's (``time.thread_time``): work another thread does for a stage is not
in it. Stages may nest; each records its inclusive time when it ends (so inner stages come first).

The router's stages: ``embedding`` (``route()`` only: ``aroute()`` embeds in a worker thread), ``decide`` (the
rest of the route), and inside it ``estimate`` (the estimator), ``lookup`` (the history's neighbour query, inside
``estimate``), ``ledger`` (usages read, reservation) and ``log`` (decision log and learning state writes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class StageTime:
    """One run of a stage (or a stage's sum, see :meth:`StageTimes.totals`).

    Attributes:
        name: the stage.
        wall_s: wall-clock seconds.
        cpu_s: CPU seconds of the thread that ran it.
    """

    name: str
    wall_s: float
    cpu_s: float


class StageTimes:
    """The stages recorded while collecting, in the order they ended."""

    def __init__(self) -> None:
        self.records: list[StageTime] = []

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        """Record one run of a stage.

        Args:
            name: the stage.
            wall_s: its wall-clock seconds.
            cpu_s: its thread CPU seconds.
        """
        self.records.append(StageTime(name, wall_s, cpu_s))

    def totals(self) -> dict[str, StageTime]:
        """Each stage's runs summed (a route may reserve twice), in the order the stages first ended."""
        sums: dict[str, StageTime] = {}
        for record in self.records:
            seen = sums.get(record.name)
            sums[record.name] = record if seen is None else StageTime(
                record.name, seen.wall_s + record.wall_s, seen.cpu_s + record.cpu_s)
        return sums


_collector: ContextVar[StageTimes | None] = ContextVar("llm_router_stage_times", default=None)
_OFF = nullcontext()


@contextmanager
def collect() -> Iterator[StageTimes]:
    """Record the stages run in this block (and in the worker threads it starts with the context, e.g.
    ``asyncio.to_thread``)."""
    times = StageTimes()
    token = _collector.set(times)
    try:
        yield times
    finally:
        _collector.reset(token)


class _Timer:
    """Times one stage into a collection."""

    __slots__ = ("_cpu", "_name", "_times", "_wall")

    def __init__(self, name: str, times: StageTimes) -> None:
        self._name, self._times = name, times
        self._wall = self._cpu = 0.0

    def __enter__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._times.add(self._name, time.perf_counter() - self._wall, time.thread_time() - self._cpu)


def stage(name: str) -> AbstractContextManager[None]:
    """Time the block as stage ``name`` if a :func:`collect` is active; else do nothing.

    Args:
        name: the stage.

    Returns:
        A context manager (a shared no-op one when nothing is collected).
    """
    times = _collector.get()
    return _OFF if times is None else _Timer(name, times)
