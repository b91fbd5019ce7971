"""Stage timing: nothing is recorded unless collected; stages record wall and thread CPU, nested ones inclusive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from llm_router_plugin import Router
from llm_router_plugin.timing import StageTimes, collect, stage
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]


def _spin(seconds: float) -> None:
    """Use the CPU for about ``seconds``."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_stages_outside_a_collection_record_nothing() -> None:
    with stage("lookup"):
        _spin(0.001)
    with collect() as times:
        pass
    with stage("lookup"):
        _spin(0.001)
    assert times.records == []


def test_nested_stages_are_recorded_inner_first_and_the_outer_includes_the_inner() -> None:
    with collect() as times:
        with stage("estimate"):
            _spin(0.005)
            with stage("lookup"):
                _spin(0.01)
        with stage("ledger"):
            time.sleep(0.01)
    assert [r.name for r in times.records] == ["lookup", "estimate", "ledger"]
    lookup, estimate, ledger = times.records
    assert estimate.cpu_s >= lookup.cpu_s >= 0.01 and estimate.wall_s >= lookup.wall_s > 0
    # Sleeping takes wall time, not CPU time.
    assert ledger.wall_s >= 0.01 and ledger.cpu_s < ledger.wall_s


def test_a_stage_run_twice_is_summed_in_the_totals() -> None:
    times = StageTimes()
    times.add("ledger", 0.002, 0.001)
    times.add("log", 0.004, 0.003)
    times.add("ledger", 0.001, 0.0005)
    totals = times.totals()
    assert list(totals) == ["ledger", "log"]
    assert np.allclose([totals["ledger"].wall_s, totals["ledger"].cpu_s], [0.003, 0.0015])


def test_a_stage_that_raises_is_still_recorded() -> None:
    with collect() as times:
        try:
            with stage("log"):
                raise RuntimeError("disk full")
        except RuntimeError:
            pass
    assert [r.name for r in times.records] == ["log"]


async def test_a_collection_reaches_the_worker_thread_of_an_async_call_and_ends_with_its_block() -> None:
    def work() -> None:
        with stage("decide"):
            _spin(0.001)

    with collect() as times:
        await asyncio.to_thread(work)
    await asyncio.to_thread(work)
    assert [r.name for r in times.records] == ["decide"]


def test_a_route_records_each_of_its_stages_and_an_uncollected_route_none(make_router: RouterFactory) -> None:
    router = make_router()
    router.route(topic_prompt("math", 1))  # outside a collection: routes as ever
    with collect() as times:
        router.route(topic_prompt("math", 2))
    totals = times.totals()
    assert set(totals) == {"embedding", "lookup", "estimate", "ledger", "log", "decide"}
    assert [r.name for r in times.records][-1] == "decide"  # every other decision stage runs inside it
    decide = totals["decide"]
    assert all(0 < totals[name].wall_s <= decide.wall_s for name in ("estimate", "ledger", "log"))
    assert totals["lookup"].wall_s <= totals["estimate"].wall_s


async def test_an_async_route_records_the_decision_stages_from_its_worker_thread(make_router: RouterFactory) -> None:
    router = make_router()
    with collect() as times:
        await router.aroute(topic_prompt("code", 3))
    assert {"lookup", "estimate", "ledger", "log", "decide"} <= set(times.totals())
