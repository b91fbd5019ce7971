"""The budget promises of the core router: validated input, no lost or poisoned spend, honest cost estimates."""

import asyncio
import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from llm_router_plugin import BudgetExhaustedError, EmptyQueryError, HistoryRecord, ModelOutcome, Router
from llm_router_plugin.redis_ledger import RedisLedger
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]


@pytest.fixture(params=["sqlite", "redis"])
def ledger_router(request: pytest.FixtureRequest, make_router: RouterFactory) -> Iterator[RouterFactory]:
    """``make_router`` on its folder's SQLite ledger, or on a Redis ledger (one namespace per folder, as a file)."""
    if request.param == "sqlite":
        yield make_router
        return
    url = request.getfixturevalue("redis_url")
    base = f"test-{uuid.uuid4().hex}"
    opened: list[RedisLedger] = []

    def build(*args: Any, data_dir: Path | None = None, **overrides: Any) -> Router:
        ledger = RedisLedger(url, namespace=f"{base}-{data_dir.name if data_dir else 'router'}")
        opened.append(ledger)
        return make_router(*args, data_dir=data_dir, ledger=ledger, **overrides)

    yield build
    for ledger in opened:
        ledger.close()
    with closing(redis.Redis.from_url(url)) as client:
        for key in client.scan_iter(match=f"{{{base}-*"):
            client.delete(key)
PRICED = [
    {"name": "big", "model": "big-model", "usd_budget": 1.0, "input_usd_per_mtok": 10.0, "output_usd_per_mtok": 30.0},
    {"name": "small", "model": "small-model", "usd_budget": 1.0, "input_usd_per_mtok": 1.0,
     "output_usd_per_mtok": 2.0},
]


def spent(router: Router, name: str) -> dict[str, float]:
    return next(d for d in router.status().deployments if d.name == name).spent


def held(router: Router, name: str) -> dict[str, float]:
    return next(d for d in router.status().deployments if d.name == name).reserved


# ------------------------------------------------------------------------------------------ route-time validation

@pytest.mark.parametrize("bad", [-1000, math.nan, math.inf, 5.7, True, "12", 10**400])
def test_route_rejects_bad_prompt_tokens_before_writing_anything(make_router: RouterFactory, bad: Any) -> None:
    router = make_router()
    with pytest.raises(ValueError, match="prompt_tokens"):
        router.route(topic_prompt("math", 1), prompt_tokens=bad)
    assert router.status().decisions == 0
    assert all(d.reserved["tokens"] == 0 for d in router.status().deployments)


@pytest.mark.parametrize("bad", [0, -5, math.nan, 2.5])
def test_route_rejects_bad_max_tokens(make_router: RouterFactory, bad: Any) -> None:
    router = make_router()
    with pytest.raises(ValueError, match="max_tokens"):
        router.route(topic_prompt("math", 1), max_tokens=bad)
    assert router.status().decisions == 0


def test_a_poisoned_sample_row_is_skipped_by_the_solve(make_router: RouterFactory) -> None:
    # A decision logged with non-finite estimates (by an older version, or a bug) must not stop every later route.
    router = make_router(warmup_queries=3)
    router.decisions.add("poison", "big", "big-model", "warmup", np.ones(64, dtype=np.float32), None,
                         {"big": {"quality": 1.0, "tokens": math.nan, "usd": 0.0},
                          "small": {"quality": 0.5, "tokens": -1.0, "usd": 0.0}})
    for i in range(6):
        decision = router.route(topic_prompt("math", i))
        router.record(decision.id, 100, 100)
    status = router.status()
    assert status.phase == "learned"
    assert any("skipped 1" in note for note in status.solve_notes)


# ------------------------------------------------------------------------------------------ record

def test_record_validates_everything_before_writing(ledger_router: RouterFactory) -> None:
    router = ledger_router()
    decision = router.route(topic_prompt("chat", 1))
    bad_calls: list[tuple[str, dict[str, Any]]] = [
        ("prompt_tokens", {"prompt_tokens": math.nan, "completion_tokens": 1}),
        ("prompt_tokens", {"prompt_tokens": 5.7, "completion_tokens": 3.2}),
        ("cost_usd", {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": math.inf}),
        ("cost_usd", {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": math.nan}),
        ("latency_s", {"prompt_tokens": 1, "completion_tokens": 1, "latency_s": -1.0}),
        ("quality", {"prompt_tokens": 1, "completion_tokens": 1, "quality": math.nan}),
        # A JSON integer can exceed the float range: it must be refused, not raise OverflowError.
        ("prompt_tokens", {"prompt_tokens": 10**400, "completion_tokens": 1}),
        ("cost_usd", {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 10**400}),
    ]
    for field, kwargs in bad_calls:
        with pytest.raises(ValueError, match=field):
            router.record(decision.id, **kwargs)
    # Nothing was written: the hold is intact, nothing charged, and a correct record still succeeds.
    assert spent(router, decision.deployment)["tokens"] == 0
    assert held(router, decision.deployment)["tokens"] == pytest.approx(decision.reserved["tokens"])
    settlement = router.record(decision.id, 40, 60)
    assert settlement is not None and settlement.actual["tokens"] == 100
    assert spent(router, decision.deployment)["tokens"] == 100


def test_a_record_interrupted_after_the_ledger_is_retried_and_charged_once(
    ledger_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = ledger_router()
    decision = router.route(topic_prompt("chat", 1))
    real = router.decisions.close_decision

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("disk full")

    monkeypatch.setattr(router.decisions, "close_decision", crash)
    with pytest.raises(RuntimeError):
        router.record(decision.id, 40, 60)
    monkeypatch.setattr(router.decisions, "close_decision", real)
    settlement = router.record(decision.id, 40, 60)  # the retry succeeds ...
    assert settlement is not None and settlement.actual["tokens"] == 100
    assert spent(router, decision.deployment)["tokens"] == 100  # ... and charges once
    assert router.record(decision.id, 40, 60) is None


def test_a_history_outage_after_settling_loses_no_spend(
    ledger_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = ledger_router()
    decision = router.route(topic_prompt("chat", 1))

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Chroma unreachable")

    monkeypatch.setattr(router.history, "upsert", down)
    settlement = router.record(decision.id, 40, 60)
    assert settlement is not None
    assert spent(router, decision.deployment)["tokens"] == 100


def test_a_deployment_renamed_between_route_and_record_is_still_charged(ledger_router: RouterFactory) -> None:
    router = ledger_router()
    decision = router.route(topic_prompt("math", 1))
    assert decision.deployment == "big"
    renamed = ledger_router(deployments=[
        {"name": "big-v2", "model": "big-model", "token_budget": 20_000},
        {"name": "small", "model": "small-model", "token_budget": 20_000},
    ])
    settlement = renamed.record(decision.id, 10, 20)
    assert settlement is not None and settlement.deployment == "big"
    spent_tokens, _ = renamed.ledger.usage("big", 0)
    assert spent_tokens["tokens"] == 30


# ------------------------------------------------------------------------------------------ prices and holds

def test_usd_budget_without_any_price_source_fails_at_start(make_router: RouterFactory) -> None:
    with pytest.raises(ValueError, match=r"nowhere.*no price|no price.*nowhere"):
        make_router(deployments=[{"name": "nowhere", "model": "unknown-model", "usd_budget": 1.0},
                                 {"name": "small", "model": "small-model"}])


def test_usd_estimate_is_this_prompts_tokens_times_the_configured_price(make_router: RouterFactory) -> None:
    router = make_router(deployments=PRICED)
    short = router.route(topic_prompt("code", 1), prompt_tokens=100)
    long = router.route(topic_prompt("code", 2), prompt_tokens=10_000)
    for decision in (short, long):
        small = next(c for c in decision.candidates if c.deployment == "small")
        # small's neighbours answered with 0 completion tokens: the cost is the prompt's own.
        assert small.usd == pytest.approx(decision.prompt_tokens * 1.0 / 1e6)
    assert long.reserved["usd"] == pytest.approx(100 * short.reserved["usd"])


def test_usd_estimate_from_history_rates_when_no_price_is_configured(make_router: RouterFactory, embedder: Any) -> None:
    unpriced = [{"name": "big", "model": "big-model", "usd_budget": 1.0},
                {"name": "small", "model": "small-model", "usd_budget": 1.0}]
    seeding = make_router(deployments=[{"name": "big", "model": "big-model"}], history=False)
    seeding.history.upsert([HistoryRecord(id=f"r{i}", embedding=vector, outcomes={
        "big-model": ModelOutcome(quality=1.0, prompt_tokens=100, completion_tokens=100, cost_usd=0.002),
        "small-model": ModelOutcome(quality=0.5, prompt_tokens=100, completion_tokens=100, cost_usd=0.0002),
    }) for i, vector in enumerate(embedder.embed([topic_prompt("math", i) for i in range(10)]))])
    router = make_router(deployments=unpriced)
    decision = router.route(topic_prompt("math", 3), prompt_tokens=1000)
    big = next(c for c in decision.candidates if c.deployment == "big")
    assert big.usd == pytest.approx((1000 + 100) * 0.002 / 200)  # 10 µUSD a token, fitted on history


def test_max_tokens_caps_the_completion_part_of_the_hold(make_router: RouterFactory) -> None:
    router = make_router(deployments=PRICED)
    free = router.route(topic_prompt("math", 1), prompt_tokens=100, deployments=["big"])
    capped = router.route(topic_prompt("math", 1), prompt_tokens=100, max_tokens=10, deployments=["big"])
    assert free.reserved["tokens"] > 900  # big's neighbours answered with 900 tokens
    assert capped.reserved["tokens"] == pytest.approx(110)
    assert capped.reserved["usd"] == pytest.approx((100 * 10.0 + 10 * 30.0) / 1e6)


def test_admission_needs_headroom_for_the_margin_on_what_is_estimated(ledger_router: RouterFactory) -> None:
    # small answers code with 0 completion tokens: a query's cost on it is its prompt alone.
    router = ledger_router(deployments=[{"name": "small", "model": "small-model", "token_budget": 1400}],
                         reserve_margin=0.5)
    guessed = "code " * 800  # about 1000 tokens at four characters a token: 1500 with the margin, more than 1400
    with pytest.raises(BudgetExhaustedError):
        router.route(guessed)
    counted = router.route(guessed, prompt_tokens=1000)  # counted: no margin needed on the prompt
    assert counted.reserved["tokens"] == pytest.approx(1000)


def test_a_hold_reserves_the_high_side_and_admits_with_the_margin(ledger_router: RouterFactory) -> None:
    # big's neighbours answered with 900 tokens: it holds 900 for the answer but needs 900 x 2 left to admit a call.
    router = ledger_router(deployments=[{"name": "big", "model": "big-model", "token_budget": 2500}],
                         reserve_margin=1.0)
    first = router.route(topic_prompt("math", 1), prompt_tokens=100)
    assert first.reserved["tokens"] == pytest.approx(1000)
    with pytest.raises(BudgetExhaustedError):  # 1500 left after the first hold: less than 100 + 1800
        router.route(topic_prompt("math", 2), prompt_tokens=100)


# ------------------------------------------------------------------------------------------ expiry

def test_an_expired_hold_is_charged_until_its_outcome_arrives(ledger_router: RouterFactory) -> None:
    clock = [1000.0]
    router = ledger_router(reservation_timeout_s=10, clock=lambda: clock[0])
    decision = router.route(topic_prompt("math", 1))
    clock[0] += 60  # the process that made the call died: no record ever came
    charged = spent(router, decision.deployment)["tokens"]
    assert charged == pytest.approx(decision.reserved["tokens"])  # the call may have happened: charged in full
    router.record(decision.id, 10, 20)  # a late record replaces the charge by the actual usage
    assert spent(router, decision.deployment)["tokens"] == pytest.approx(30)


def test_an_expired_hold_is_refunded_when_its_failure_arrives(ledger_router: RouterFactory) -> None:
    clock = [1000.0]
    router = ledger_router(reservation_timeout_s=10, clock=lambda: clock[0])
    decision = router.route(topic_prompt("math", 1))
    clock[0] += 60
    router.record(decision.id, 0, 0, error="upstream 500")
    assert spent(router, decision.deployment)["tokens"] == pytest.approx(0)


# ------------------------------------------------------------------------------------------ queries without text

@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": None}],
    [{"role": "user", "content": "   "}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
    [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}],
])
def test_chat_messages_without_text_are_routed_and_reserved(make_router: RouterFactory, messages: Any) -> None:
    router = make_router()
    decision = router.route(messages, prompt_tokens=120)
    assert decision.reserved["tokens"] >= 120
    assert "no text" in decision.reason
    assert held(router, decision.deployment)["tokens"] == pytest.approx(decision.reserved["tokens"])
    assert router.record(decision.id, 120, 30) is not None
    assert spent(router, decision.deployment)["tokens"] == 150


def test_tool_calls_are_routable_text(make_router: RouterFactory) -> None:
    router = make_router()
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "solve_equation", "arguments": '{"q": "integral"}'}}]}]
    decision = router.route(messages)
    assert "no text" not in decision.reason


@pytest.mark.parametrize("query", ["", "   ", []])
def test_a_bare_empty_query_is_refused(make_router: RouterFactory, query: Any) -> None:
    router = make_router()
    with pytest.raises(EmptyQueryError):
        router.route(query)
    assert router.status().decisions == 0


# ------------------------------------------------------------------------------------------ concurrency

def test_concurrent_routing_serves_nearly_what_sequential_routing_serves(ledger_router: RouterFactory,
                                                                         tmp_path: Any) -> None:
    # Budgets for about 50 queries; the prompt is most of each query's cost, as with few-shot prompts.
    deployments = [{"name": "big", "model": "big-model", "token_budget": 30_000},
                   {"name": "small", "model": "small-model", "token_budget": 30_000}]
    prompts = [topic_prompt("code", i) for i in range(200)]

    def actual(i: int, deployment: str) -> tuple[int, int]:
        # What the calls really use: the prompt's own tokens, and an answer as long as history's or a bit shorter.
        return 1000 + (i * 37) % 200, (700 + (i * 53) % 200 if deployment == "big" else 0)

    sequential = ledger_router(deployments=deployments, data_dir=tmp_path / "seq")
    served_seq = 0
    for i, prompt in enumerate(prompts):
        try:
            decision = sequential.route(prompt, prompt_tokens=actual(i, "")[0])
        except BudgetExhaustedError:
            continue
        sequential.record(decision.id, *actual(i, decision.deployment))
        served_seq += 1

    concurrent = ledger_router(deployments=deployments, data_dir=tmp_path / "conc")

    async def one(i: int) -> bool:
        try:
            decision = await concurrent.aroute(prompts[i], prompt_tokens=actual(i, "")[0])
        except BudgetExhaustedError:
            return False
        await concurrent.arecord(decision.id, *actual(i, decision.deployment))
        return True

    async def all_at_once() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    served_conc = asyncio.run(all_at_once())
    assert served_seq >= 35
    assert served_conc >= 0.9 * served_seq
    for d in concurrent.status().deployments:
        assert d.spent["tokens"] <= d.limits["tokens"]


def test_usage_reported_after_a_failure_report_is_charged(ledger_router: RouterFactory) -> None:
    router = ledger_router()
    decision = router.route(topic_prompt("chat", 1))
    assert router.record(decision.id, 0, 0, error="guardrail failed the response") is None
    assert spent(router, decision.deployment)["tokens"] == 0
    settlement = router.record(decision.id, 40, 60)  # the answer's usage arrives after all
    assert settlement is not None and settlement.actual["tokens"] == 100
    assert router.record(decision.id, 40, 60) is None
    assert spent(router, decision.deployment)["tokens"] == 100
    assert router.decisions.get(decision.id).status == "recorded"  # type: ignore[union-attr]


def test_n_completions_are_held_n_times(make_router: RouterFactory) -> None:
    router = make_router(deployments=PRICED)
    one = router.route(topic_prompt("math", 1), prompt_tokens=100, max_tokens=100, deployments=["big"])
    fifty = router.route(topic_prompt("math", 1), prompt_tokens=100, max_tokens=100, n=50, deployments=["big"])
    assert one.reserved["tokens"] == pytest.approx(200)
    assert fifty.reserved["tokens"] == pytest.approx(100 + 50 * 100)
    with pytest.raises(ValueError, match="n:"):
        router.route(topic_prompt("math", 1), n=0)


def test_a_usd_budget_needs_both_sides_of_a_configured_price(make_router: RouterFactory) -> None:
    with pytest.raises(ValueError, match="output_usd_per_mtok"):
        make_router(deployments=[{"name": "big", "model": "big-model", "usd_budget": 1.0, "input_usd_per_mtok": 1.0}])
