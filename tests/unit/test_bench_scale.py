"""``llm-router bench-scale``: the summaries, the config it measures, the block order, and a tiny SQLite-only run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_router_plugin.bench.scale import (
    LEDGERS,
    TOKEN_BUDGET,
    ScaleOptions,
    block_order,
    command_line,
    draw_queries,
    scale_config,
    summarize,
)
from llm_router_plugin.cli import app, parse_counts
from llm_router_plugin.dataset import bundled_path, read_data


def test_summarize_gives_count_mean_and_percentiles() -> None:
    summary = summarize([float(i) for i in range(1, 101)])
    assert summary["n"] == 100 and summary["mean"] == 50.5
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(90.1) and summary["p99"] == pytest.approx(99.01)
    assert summarize([3.0])["p99"] == 3.0
    with pytest.raises(ValueError, match="samples"):
        summarize([])


def test_the_config_is_the_shipped_default_with_token_budgets_on_the_chosen_ledger(tmp_path: Path) -> None:
    shipped = [d for d in read_data(bundled_path()).models]
    config = scale_config(tmp_path, "redis://127.0.0.1:6399/0", 2000, namespace="ns")
    assert len(config.deployments) == 11 and {d.model for d in config.deployments} <= set(shipped)
    assert all(d.token_budget == TOKEN_BUDGET and d.usd_budget and d.window == "1d" for d in config.deployments)
    assert [d.name for d in config.deployments if d.fallback] == ["WizardLM/WizardLM-13B-V1.2"]
    assert (config.ledger, config.ledger_namespace, config.expected_queries) == ("redis://127.0.0.1:6399/0", "ns", 2000)
    assert config.embedding_model == "hashing-384"
    assert scale_config(tmp_path, "sqlite", 10).ledger == "sqlite"


def test_ledgers_take_turns_with_the_first_alternating() -> None:
    assert block_order(3, LEDGERS) == ["sqlite", "redis", "redis", "sqlite", "sqlite", "redis"]
    assert block_order(2, ["sqlite"]) == ["sqlite", "sqlite"]


def test_queries_use_every_row_once_before_repeating_and_depend_on_the_seed() -> None:
    rows = read_data(bundled_path()).rows[:5]
    drawn = draw_queries(rows, 12, seed=1)
    assert len({id(r) for r in drawn[:5]}) == 5 and drawn[5:10] == drawn[:5]
    assert draw_queries(rows, 12, seed=1) == drawn and draw_queries(rows, 12, seed=2) != drawn
    with pytest.raises(ValueError, match="rows"):
        draw_queries([], 3, seed=0)


@pytest.mark.parametrize(("field", "value"), [("decisions", 0), ("block", 0), ("requests", 0), ("concurrency", 0),
                                              ("ledgers", ("postgres",)), ("ledgers", ()), ("workers", (0,))])
def test_bad_options_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ScaleOptions(**{field: value})  # type: ignore[arg-type]


def test_worker_counts_parse_and_the_command_line_reruns_the_options() -> None:
    assert parse_counts("1, 2,4", "--workers") == (1, 2, 4) and parse_counts("", "--workers") == ()
    with pytest.raises(ValueError, match="--workers"):
        parse_counts("1,two", "--workers")
    assert command_line(ScaleOptions(workers=())) == (
        "llm-router bench-scale --decisions 2000 --block 50 --ledgers sqlite,redis --workers '' --requests 400 "
        "--concurrency 32 --seed 0")


@pytest.mark.integration
def test_a_small_sqlite_run_writes_every_summary(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    result = CliRunner().invoke(app, ["bench-scale", "--decisions", "20", "--block", "5", "--ledgers", "sqlite",
                                      "--workers", "", "--json", str(out), "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "sqlite   route+record" in result.output
    written = json.loads(out.read_text(encoding="utf-8"))
    sqlite = written["latency"]["sqlite"]
    for step in ("route", "route_record"):
        for clock in ("wall_ms", "cpu_ms"):
            assert sqlite[step][clock]["n"] == 20
            assert 0 <= sqlite[step][clock]["p50"] <= sqlite[step][clock]["p90"] <= sqlite[step][clock]["p99"]
    assert sqlite["route_record"]["wall_ms"]["p50"] >= sqlite["route"]["wall_ms"]["p50"]
    assert "redis" not in written["latency"] and written["throughput"] == []
    assert written["command"].startswith("llm-router bench-scale --decisions 20 ")
