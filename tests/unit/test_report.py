"""The operator's report of a router: spend by budget window, decisions, estimate error, feedback."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_router_plugin import BudgetExhaustedError, Decision, Router
from llm_router_plugin.report import RouterReport, build_report, format_report, parse_since, write_plot
from tests.conftest import topic_prompt

HOUR = 3600.0
DEPLOYMENTS = [
    {"name": "big", "model": "big-model", "usd_budget": 1.0, "window": "1h",
     "input_usd_per_mtok": 10, "output_usd_per_mtok": 30},
    {"name": "small", "model": "small-model", "token_budget": 20_000, "input_usd_per_mtok": 1,
     "output_usd_per_mtok": 2},
]


class Clock:
    """A settable clock (the ledger's windows start at its anchor, known only once the router is built)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def estimated_usd(decision: Decision) -> float:
    return next(c.usd for c in decision.candidates if c.deployment == decision.deployment)


@pytest.fixture
def driven(make_router: Callable[..., Router]) -> tuple[Router, float, list[float]]:
    """A router that made five decisions: three recorded on big (two windows), one failed and one open on small.

    Returns:
        The router, its ledger's anchor, and big's decisions' relative cost estimate errors.
    """
    clock = Clock()
    # 20 queries an hour: the warm-up's pace leaves big (about 0.03 USD a math query) within its 1 USD an hour
    router = make_router(deployments=DEPLOYMENTS, clock=clock, expected_queries=20)
    anchor = router.ledger.anchor
    errors = []
    # (offset from the anchor, recorded usage, reported cost, actual cost, feedback): the second call reports no
    # cost, so it is priced from its tokens: 100 × 10 + 100 × 30 USD per million
    for offset, (prompt, completion), cost, actual, quality in (
        (10, (100, 200), 0.01, 0.01, 1.0), (20, (100, 100), None, 0.004, 0.5), (HOUR + 100, (50, 50), 0.02, 0.02, None),
    ):
        clock.now = anchor + offset
        decision = router.route(topic_prompt("math", int(offset)))
        assert decision.deployment == "big"  # only big answers math
        router.record(decision.id, prompt, completion, cost_usd=cost)
        if quality is not None:
            router.feedback(decision.id, quality)
        errors.append((estimated_usd(decision) - actual) / actual)
    clock.now = anchor + 30
    failed = router.route(topic_prompt("code", 1), deployments=["small"])
    router.record(failed.id, 0, 0, error="boom")
    clock.now = anchor + 40
    router.route(topic_prompt("chat", 1), deployments=["small"])  # still open: its call has not ended
    clock.now = anchor + HOUR + 200
    return router, anchor, errors


def test_spend_counts_recorded_calls_per_budget_window_and_not_failed_or_open_ones(
    driven: tuple[Router, float, list[float]],
) -> None:
    router, anchor, _ = driven
    report = build_report(router, now=anchor + HOUR + 200)
    big, small = report.deployments
    assert (big.name, big.window, big.limits) == ("big", "1h", {"usd": 1.0})
    assert big.spent == pytest.approx({"tokens": 600, "usd": 0.034})
    # cumulative within its window: the third call starts the second hour at zero
    assert [(p.at - anchor, p.window, p.tokens, p.usd) for p in big.spend] == [
        (10, 0, 300, pytest.approx(0.01)), (20, 0, 500, pytest.approx(0.014)),
        (HOUR + 100, 1, 100, pytest.approx(0.02)),
    ]
    assert [p.window_start - anchor for p in big.spend] == [0, 0, HOUR]
    assert big.ledger_spent["usd"] == pytest.approx(0.02)  # the ledger agrees on the current window
    assert small.spent == {"tokens": 0, "usd": 0} and small.spend == []
    assert (small.statuses, big.statuses) == ({"failed": 1, "open": 1}, {"recorded": 3})
    assert (report.decisions, report.statuses) == (5, {"recorded": 3, "failed": 1, "open": 1})


def test_decisions_by_phase_estimate_error_and_feedback_per_deployment(
    driven: tuple[Router, float, list[float]],
) -> None:
    router, _, errors = driven
    report = build_report(router)
    big, small = report.deployments
    assert (big.decisions, big.phases, small.decisions, small.phases) == (3, {"warmup": 3}, 2, {"warmup": 2})
    usd = big.estimate_error["usd"]
    assert usd.calls == 3
    assert usd.mean_relative == pytest.approx(statistics.mean(errors))
    assert usd.median_absolute_relative == pytest.approx(statistics.median(abs(e) for e in errors))
    assert report.estimate_error["usd"] == usd  # small has no charged call
    assert small.estimate_error["usd"].calls == 0 and small.estimate_error["usd"].mean_relative is None
    assert (big.feedback, big.mean_quality, small.feedback, small.mean_quality) == (2, 0.75, 0, None)


def test_every_call_is_listed_with_its_status_and_only_charged_ones_with_actual_usage(
    driven: tuple[Router, float, list[float]],
) -> None:
    router, _, _ = driven
    calls = build_report(router).calls
    assert [(c.deployment, c.status, c.charged) for c in calls] == [
        ("big", "recorded", True), ("big", "recorded", True), ("small", "failed", False), ("small", "open", False),
        ("big", "recorded", True)]
    failed = calls[2]
    assert failed.actual is None and failed.error == "boom" and failed.estimated["usd"] > 0
    assert calls[1].actual == pytest.approx({"tokens": 200, "usd": 0.004})


def test_since_keeps_later_decisions_and_their_windows_spend_so_far(
    driven: tuple[Router, float, list[float]],
) -> None:
    router, anchor, _ = driven
    report = build_report(router, since=anchor + 15)
    big = report.deployments[0]
    assert report.since == anchor + 15 and report.decisions == 4
    assert big.decisions == 2 and big.spent == pytest.approx({"tokens": 300, "usd": 0.024})
    # the first call is before `since`, but its window's spend counts toward the second's point
    assert [(p.window, p.usd) for p in big.spend] == [(0, pytest.approx(0.014)), (1, pytest.approx(0.02))]


def test_a_failed_call_that_reported_usage_is_charged_as_the_ledger_charges_it(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(deployments=DEPLOYMENTS)
    decision = router.route(topic_prompt("code", 2), deployments=["small"])
    router.record(decision.id, 10, 5, error="output guardrail")
    [small] = [d for d in build_report(router).deployments if d.name == "small"]
    assert small.statuses == {"failed": 1}
    assert small.spent == pytest.approx({"tokens": 15, "usd": 20e-6}) == small.ledger_spent


def test_the_table_the_json_and_the_plot(driven: tuple[Router, float, list[float]], tmp_path: Path) -> None:
    router, _, _ = driven
    report = build_report(router)
    table = format_report(report)
    assert "5 decisions: 3 recorded, 1 failed, 1 open" in table
    big_row = next(line for line in table.splitlines() if line.startswith("big "))
    assert "0.034" in big_row and "warmup 3" in big_row
    assert RouterReport.model_validate(json.loads(report.model_dump_json())) == report
    write_plot({"chat": report, "code": report}, tmp_path / "plots" / "report.png")
    assert (tmp_path / "plots" / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_since_is_a_duration_back_from_now_or_an_iso_date() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 2 * HOUR
    assert parse_since("2024-05-01T00:00:00+00:00", now=0.0) == 1714521600.0
    with pytest.raises(ValueError, match="since"):
        parse_since("yesterday", now=0.0)


def test_a_refused_query_is_declined_not_an_open_call_of_a_nameless_deployment(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(deployments=[{"name": "big", "model": "big-model", "token_budget": 10}])
    with pytest.raises(BudgetExhaustedError):
        router.route(topic_prompt("math", 1))
    report = build_report(router)
    assert [d.name for d in report.deployments] == ["big"]
    assert (report.decisions, report.statuses) == (1, {"declined": 1})
    assert [(c.deployment, c.status, c.charged) for c in report.calls] == [("", "declined", False)]
    assert "1 decisions: 1 declined" in format_report(report)


def test_spend_is_what_the_ledger_charged_even_after_the_prices_change(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    def deployment(usd_per_mtok: float) -> list[dict[str, object]]:
        return [{"name": "small", "model": "small-model", "token_budget": 20_000,
                 "input_usd_per_mtok": usd_per_mtok, "output_usd_per_mtok": usd_per_mtok}]

    data_dir = tmp_path / "shared"
    router = make_router(data_dir=data_dir, deployments=deployment(1))
    decision = router.route(topic_prompt("code", 1))
    router.record(decision.id, 100, 100)  # no cost reported: charged at the price of the day, 200 × 1e-6 USD
    repriced = make_router(data_dir=data_dir, deployments=deployment(10))
    [small] = build_report(repriced).deployments
    assert small.ledger_spent["usd"] == pytest.approx(200e-6)
    assert small.spent["usd"] == pytest.approx(small.ledger_spent["usd"])
    assert build_report(repriced).calls[0].actual == pytest.approx({"tokens": 200, "usd": 200e-6})


def test_a_since_too_far_back_for_a_date_is_refused() -> None:
    with pytest.raises(ValueError, match="since"):
        parse_since("99999999999999999999d", now=0.0)
