import asyncio
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_router_plugin import (
    BudgetExhaustedError,
    EmptyQueryError,
    LedgerCorruptError,
    Router,
    UnknownDecisionError,
    read_data,
)
from llm_router_plugin.history import decode_outcomes
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]


def serve(router: Router, topic: str, n: int, start: int = 0, tokens: tuple[int, int] | None = None) -> list[str]:
    """Route n prompts of a topic, record each as using the estimated tokens (or ``tokens``); return deployments."""
    chosen = []
    for i in range(start, start + n):
        decision = router.route(topic_prompt(topic, i + 1000))
        estimate = next(c for c in decision.candidates if c.deployment == decision.deployment).tokens
        used = tokens or (decision.prompt_tokens, int(estimate) - decision.prompt_tokens)
        chosen.append(decision.deployment)
        router.record(decision.id, prompt_tokens=used[0], completion_tokens=max(0, used[1]))
    return chosen


def test_decision_explains_every_candidate(make_router: RouterFactory) -> None:
    router = make_router()
    decision = router.route([{"role": "user", "content": topic_prompt("math", 999)}])
    assert decision.phase == "warmup"
    assert {c.deployment for c in decision.candidates} == {"big", "small"}
    by_name = {c.deployment: c for c in decision.candidates}
    assert by_name["big"].quality > 0.99
    assert by_name["small"].quality < 0.01
    assert by_name["big"].tokens > by_name["small"].tokens
    assert decision.deployment == "big"  # the only one that can answer, and affordable
    assert decision.reserved["tokens"] > 0
    assert decision.reason


def test_equal_quality_goes_to_the_cheaper_deployment(make_router: RouterFactory) -> None:
    assert make_router().route(topic_prompt("code", 5)).deployment == "small"


def test_weights_are_learned_after_warmup_and_rescheduled(make_router: RouterFactory) -> None:
    router = make_router(warmup_queries=10)
    serve(router, "math", 9)
    assert router.status().phase == "warmup"
    serve(router, "math", 2, start=9)
    status = router.status()
    assert status.phase == "learned"
    assert status.next_solve_at == 20  # doubling schedule: W, 2W, 4W ...
    assert all("tokens" in d.weights for d in status.deployments)
    decision = router.route(topic_prompt("chat", 1))
    assert decision.phase == "learned"


def test_budgets_are_never_exceeded_and_exhaustion_names_deployments(make_router: RouterFactory) -> None:
    router = make_router(deployments=[
        {"name": "big", "model": "big-model", "token_budget": 5_000},
        {"name": "small", "model": "small-model", "token_budget": 300},
    ], warmup_queries=5)
    chosen = []
    with pytest.raises(BudgetExhaustedError) as caught:
        for i in range(200):
            chosen += serve(router, "math", 1, start=i)
    assert "big" in chosen and "small" in chosen  # big while it lasted, then the cheap one
    for d in router.status().deployments:
        assert d.spent["tokens"] <= d.limits["tokens"]
    message = str(caught.value)
    assert "big" in message and "small" in message and "left" in message
    assert set(caught.value.remaining) == {"big", "small"}


def test_warmup_serves_a_query_even_when_nothing_is_within_pace(make_router: RouterFactory) -> None:
    # 5000 queries expected on 20k tokens: the pace (4 tokens a query) is below any estimate.
    router = make_router(expected_queries=5000)
    assert router.route(topic_prompt("math", 1)).deployment == "big"


def test_learned_price_declines_a_query_not_worth_the_budget(make_router: RouterFactory) -> None:
    # Warm-up on math, where only big answers and its budget covers a few of the 1000 expected queries: its learned
    # price makes a chat query (worth less than a math one) not worth big's budget, though the budget remains.
    router = make_router(expected_queries=1000)
    serve(router, "math", 11)
    assert router.status().phase == "learned"
    with pytest.raises(BudgetExhaustedError) as caught:
        router.route(topic_prompt("chat", 1), deployments=["big"])
    assert caught.value.priced_out
    assert caught.value.remaining["big"]["tokens"] > 1000
    assert "fallback" in str(caught.value) and "big" in str(caught.value)


def test_fallback_serves_when_nothing_is_affordable(make_router: RouterFactory) -> None:
    router = make_router(deployments=[
        {"name": "big", "model": "big-model", "token_budget": 10},
        {"name": "small", "model": "small-model", "token_budget": 10, "fallback": True},
    ])
    decision = router.route(topic_prompt("math", 1))
    assert decision.phase == "fallback" and decision.deployment == "small"
    assert "fallback" in decision.reason


def test_record_settles_actual_usage_and_learns(make_router: RouterFactory) -> None:
    router = make_router()
    size = router.history.count()
    decision = router.route(topic_prompt("chat", 3))
    held = router.status().deployments
    assert sum(d.reserved["tokens"] for d in held) == pytest.approx(decision.reserved["tokens"])
    settlement = router.record(decision.id, prompt_tokens=40, completion_tokens=60, latency_s=0.5)
    assert settlement is not None and settlement.actual["tokens"] == 100
    after = {d.name: d for d in router.status().deployments}
    assert after[decision.deployment].spent["tokens"] == 100
    assert after[decision.deployment].reserved["tokens"] == 0
    assert router.history.count() == size + 1  # the outcome joined history
    assert router.record(decision.id, 40, 60) is None  # recording twice charges once
    router.feedback(decision.id, 1.0)


def test_failed_call_releases_the_reservation(make_router: RouterFactory) -> None:
    router = make_router()
    decision = router.route(topic_prompt("math", 3))
    assert router.record(decision.id, 0, 0, error="upstream 500") is None
    status = {d.name: d for d in router.status().deployments}[decision.deployment]
    assert status.spent["tokens"] == 0 and status.reserved["tokens"] == 0
    with pytest.raises(ValueError, match="failed"):
        router.feedback(decision.id, 1.0)


def test_unknown_decision_and_bad_values(make_router: RouterFactory) -> None:
    router = make_router()
    with pytest.raises(UnknownDecisionError):
        router.record("nope", 1, 1)
    with pytest.raises(UnknownDecisionError):
        router.feedback("nope", 0.5)
    decision = router.route(topic_prompt("math", 3))
    with pytest.raises(ValueError, match="prompt_tokens"):
        router.record(decision.id, -1, 0)
    with pytest.raises(ValueError, match="quality"):
        router.record(decision.id, 1, 1, quality=2.0)


@pytest.mark.parametrize("query", ["", "   ", []])
def test_empty_queries_are_refused_without_side_effects(make_router: RouterFactory, query: object) -> None:
    router = make_router()
    with pytest.raises(EmptyQueryError):
        router.route(query)  # type: ignore[arg-type]
    assert router.status().decisions == 0


def test_huge_prompt_is_routed_and_counted_in_full(make_router: RouterFactory) -> None:
    router = make_router(deployments=[{"name": "big", "model": "big-model"}, {"name": "small", "model": "small-model"}])
    decision = router.route("math " * 40_000)
    assert decision.prompt_tokens == 50_000


def test_restricting_to_some_deployments(make_router: RouterFactory) -> None:
    router = make_router()
    assert router.route(topic_prompt("math", 1), deployments=["small"]).deployment == "small"
    with pytest.raises(ValueError, match="unknown deployment names"):
        router.route(topic_prompt("math", 1), deployments=["nope"])
    with pytest.raises(ValueError, match="empty"):
        router.route(topic_prompt("math", 1), deployments=[])


def test_state_survives_a_restart(make_router: RouterFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    router = make_router(warmup_queries=5)
    serve(router, "math", 6)
    before = router.status()
    again = make_router(warmup_queries=5)  # same folder: same Chroma, ledger and decision log
    after = again.status()
    assert after.phase == "learned" and after.decisions == before.decisions
    assert [d.spent for d in after.deployments] == [d.spent for d in before.deployments]
    assert [d.weights for d in after.deployments] == [d.weights for d in before.deployments]
    assert after.history_size == before.history_size


def test_async_api(make_router: RouterFactory) -> None:
    router = make_router()

    async def run() -> None:
        decisions = await asyncio.gather(*(router.aroute(topic_prompt("code", i)) for i in range(5)))
        for d in decisions:
            await router.arecord(d.id, 10, 10)
        await router.afeedback(decisions[0].id, 0.5)
        assert (await router.astatus()).decisions == 5

    asyncio.run(run())


def test_quality_target_mode_spends_only_where_quality_needs_it(make_router: RouterFactory) -> None:
    router = make_router(mode="quality_target", quality_target=0.7, warmup_queries=6,
                         deployments=[{"name": "big", "model": "big-model"}, {"name": "small", "model": "small-model"}])
    serve(router, "chat", 3)
    serve(router, "math", 3)
    status = router.status()
    assert status.phase == "learned" and status.mu > 0  # the quality constraint binds
    # chat: small (0.7) is nearly as good as big (0.8) at a fraction of the tokens; math: only big answers.
    assert router.route(topic_prompt("chat", 50)).deployment == "small"
    assert router.route(topic_prompt("math", 50)).deployment == "big"


@pytest.mark.parametrize("store_prompts", [False, True])
def test_import_history_follows_the_config_on_prompt_texts(
    make_router: RouterFactory, tmp_path: Path, store_prompts: bool
) -> None:
    path = tmp_path / "h.csv"
    path.write_text("prompt,big-model,small-model\nsolve the equation,1,0\ntell me a story,0.8,0.7\n", encoding="utf-8")
    router = make_router(history=False, store_prompts=store_prompts)
    report = router.import_history(path)
    assert (report.added, report.existing, report.rejected, report.models) == (2, 0, 0, ["big-model", "small-model"])
    texts = router.history._collection.get(include=["documents"])["documents"] or []
    assert sorted(t or "" for t in texts) == (["solve the equation", "tell me a story"] if store_prompts else ["", ""])
    again = router.import_history(read_data(str(path)))  # a parsed file works as well as a path
    assert (again.added, again.existing) == (0, 2)


def test_a_new_router_folder_is_readable_by_its_owner_only(make_router: RouterFactory, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    data_dir = shared / "apps" / "router"
    router = make_router(data_dir=data_dir)
    decision = router.route(topic_prompt("math", 1))
    router.record(decision.id, prompt_tokens=10, completion_tokens=20)

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(shared) == 0o755  # not the router's to tighten
    assert {mode(folder) for folder in (shared / "apps", data_dir, data_dir / "chroma")} == {0o700}
    ledger = [data_dir / name for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm")]
    assert {mode(path) for path in ledger} == {0o600}  # the ledger and decision log, with SQLite's WAL files


def test_a_router_refuses_a_truncated_ledger(make_router: RouterFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "router"
    data_dir.mkdir()
    ledger = data_dir / "ledger.sqlite3"
    ledger.write_bytes(b"")
    with pytest.raises(LedgerCorruptError, match=f"^{re.escape(str(ledger))}: not a budget ledger "):
        make_router(data_dir=data_dir)


def learned_quality(router: Router, decision_id: str, model: str) -> float | None:
    """The quality history holds for a recorded decision's model (``None``: recorded without one)."""
    got = router.history._collection.get(ids=[decision_id], include=["metadatas"])
    value = decode_outcomes((got["metadatas"] or [{}])[0]).get(model, [math.nan])[0]
    return None if math.isnan(value) else value


def estimated_quality(router: Router, query: str, deployment: str) -> float:
    """The router's estimated quality of a deployment for a query (the decision is recorded, so nothing stays held)."""
    decision = router.route(query)
    router.record(decision.id, prompt_tokens=10, completion_tokens=10)
    return next(c.quality for c in decision.candidates if c.deployment == deployment)


def test_feedback_before_the_call_is_recorded_is_kept_and_learned_when_it_is(make_router: RouterFactory) -> None:
    # A client may send its score as soon as it has read the answer, before the call's usage is recorded.
    router = make_router()
    decision = router.route(topic_prompt("chat", 3))
    router.feedback(decision.id, 0.25)
    router.record(decision.id, prompt_tokens=40, completion_tokens=60)
    logged = router.decisions.get(decision.id)
    assert logged is not None and logged.status == "recorded"
    assert logged.outcome["quality"] == 0.25 and logged.outcome["prompt_tokens"] == 40
    assert learned_quality(router, decision.id, decision.model) == 0.25


def test_a_quality_given_to_record_wins_over_earlier_feedback(make_router: RouterFactory) -> None:
    router = make_router()
    decision = router.route(topic_prompt("chat", 3))
    router.feedback(decision.id, 0.25)
    router.record(decision.id, prompt_tokens=40, completion_tokens=60, quality=0.75)
    assert learned_quality(router, decision.id, decision.model) == 0.75


def test_feedback_on_a_decision_without_text_is_kept_in_the_log(make_router: RouterFactory) -> None:
    # Nothing joined history for it (no embedding to find it by), so there is no history record to update.
    router = make_router()
    decision = router.route([{"role": "user", "content": None}])
    router.record(decision.id, prompt_tokens=40, completion_tokens=60)
    router.feedback(decision.id, 1.0)
    logged = router.decisions.get(decision.id)
    assert logged is not None and logged.outcome["quality"] == 1.0


@pytest.mark.parametrize("quality", [float("nan"), float("inf"), -0.1, 1.5, True, "0.5", None,
                                     pytest.param(10**400, id="int-beyond-float")])
def test_feedback_refuses_a_bad_quality_naming_it(make_router: RouterFactory, quality: object) -> None:
    router = make_router()
    decision = router.route(topic_prompt("chat", 3))
    router.record(decision.id, prompt_tokens=40, completion_tokens=60)
    with pytest.raises(ValueError, match=r"^quality: "):
        router.feedback(decision.id, quality)  # type: ignore[arg-type]


def test_feedback_moves_the_next_estimate_of_a_similar_query(make_router: RouterFactory) -> None:
    router = make_router()
    query = topic_prompt("chat", 3)
    decision = router.route(query)
    router.record(decision.id, prompt_tokens=40, completion_tokens=60)
    before = estimated_quality(router, query, decision.deployment)
    router.feedback(decision.id, 0.0)
    after_bad = estimated_quality(router, query, decision.deployment)
    router.feedback(decision.id, 1.0)  # the user changed their mind: the later score replaces the earlier one
    after_good = estimated_quality(router, query, decision.deployment)
    assert after_bad < before < after_good
    similar = topic_prompt("chat", 4)
    assert estimated_quality(router, similar, decision.deployment) > after_bad


def test_dry_runs_reserve_log_and_count_nothing(make_router: RouterFactory, tmp_path: Path) -> None:
    clock = lambda: 1_000_000.0  # noqa: E731 - pacing reads the clock: both routers see the same time
    router = make_router(clock=clock)
    dry = [router.route(topic_prompt(topic, 7), dry_run=True) for topic in ("math", "code", "chat", "math")]
    assert all(d.dry_run for d in dry)
    status = router.status()
    assert status.decisions == 0
    assert all(d.reserved["tokens"] == 0 and d.spent["tokens"] == 0 for d in status.deployments)
    with pytest.raises(UnknownDecisionError):
        router.record(dry[0].id, prompt_tokens=10, completion_tokens=10)
    # The dry run showed what the next real decision is, and the real one is what a router without them makes.
    fresh = make_router(data_dir=tmp_path / "fresh", clock=clock)
    real, untouched = router.route(topic_prompt("math", 7)), fresh.route(topic_prompt("math", 7))
    same = {"id", "created_at", "dry_run"}
    assert real.model_dump(exclude=same) == untouched.model_dump(exclude=same) == dry[0].model_dump(exclude=same)


def test_a_refused_dry_run_is_not_counted(make_router: RouterFactory) -> None:
    router = make_router(deployments=[{"name": "big", "model": "big-model", "token_budget": 10}])
    with pytest.raises(BudgetExhaustedError):
        router.route(topic_prompt("math", 1), dry_run=True)
    assert router.status().decisions == 0


def test_the_score_formula_of_a_decision_reproduces_its_scores(make_router: RouterFactory) -> None:
    router = make_router(expected_queries=1000)
    warm = router.route(topic_prompt("code", 1), dry_run=True)
    assert warm.score_formula.startswith("warm-up") and "pace" in warm.score_formula
    serve(router, "math", 11)
    learned = router.route(topic_prompt("code", 2), dry_run=True)
    assert learned.phase == "learned" and "λ" in learned.score_formula
    assert any(c.weights.get("tokens") for c in learned.candidates)
    for c in learned.candidates:  # quality − Σ_u λ_u · estimated usage_u, as the formula says
        usage = {"tokens": c.tokens, "usd": c.usd}
        assert c.score == pytest.approx(c.quality - sum(w * usage[u] for u, w in c.weights.items()))
