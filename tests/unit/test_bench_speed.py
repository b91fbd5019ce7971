"""``llm-router bench-speed``: its options, the synthetic history, the proxies' turns, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_router_plugin.bench.scale import scale_config
from llm_router_plugin.bench.speed import DIMENSION, STAGES, SpeedOptions, SyntheticHistory, proxy_turns
from llm_router_plugin.cli import app


@pytest.mark.parametrize(("field", "value"), [
    ("sizes", ()), ("sizes", (100, 10)), ("sizes", (0,)), ("sizes", (10, 10)), ("queries", 0), ("clusters", 0),
    ("block", 0), ("concurrency_size", 50), ("proxy_requests", -1), ("in_flight", ()), ("proxy_in_flight", (0,)),
])
def test_bad_options_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SpeedOptions(**{field: value})  # type: ignore[arg-type]


def test_the_synthetic_history_is_seeded_clustered_and_priced_like_the_deployments(tmp_path: Path) -> None:
    deployments = scale_config(tmp_path, "sqlite", 10).deployments
    synthetic = SyntheticHistory(deployments, clusters=5, seed=3)
    records = synthetic.records(100, 400)
    assert [r.id for r in records[:2]] == ["syn-100", "syn-101"] and len(records) == 300
    again = SyntheticHistory(deployments, clusters=5, seed=3).records(100, 400)
    assert again[7].embedding == records[7].embedding and again[7].outcomes == records[7].outcomes
    vectors = np.asarray([r.embedding for r in records])
    assert vectors.shape == (300, DIMENSION) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # Each record lies near one of the centres: much nearer than to the others.
    nearest = np.sort(vectors @ synthetic.centres.T, axis=1)
    assert (nearest[:, -1] > 0.6).all() and (nearest[:, -1] - nearest[:, -2] > 0.2).all()
    outcome = records[0].outcomes
    assert set(outcome) == {d.model for d in deployments}
    gpt4, mistral = outcome["gpt-4-1106-preview"], outcome["mistralai/mistral-7b-chat"]
    assert gpt4.quality in (0.0, 1.0) and gpt4.prompt_tokens == mistral.prompt_tokens > 0
    # Cost follows the list prices: GPT-4's $10/$30 per million tokens.
    assert gpt4.cost_usd == pytest.approx((10 * gpt4.prompt_tokens + 30 * gpt4.completion_tokens) / 1e6)
    queries = synthetic.queries(4)  # near the data, none of it
    assert queries.shape == (4, DIMENSION) and ((queries @ synthetic.centres.T).max(axis=1) > 0.6).all()
    assert (queries @ vectors.T).max() < 0.99


def test_the_proxies_take_turns_with_the_first_alternating() -> None:
    assert list(proxy_turns(3)) == [(True, False), (False, True), (True, False)]


@pytest.mark.integration
def test_a_quick_run_writes_every_number_and_the_plot(tmp_path: Path) -> None:
    out, plot = tmp_path / "speed.json", tmp_path / "speed.png"
    result = CliRunner().invoke(app, ["bench-speed", "--quick", "--embedder", "hashing-384", "--json", str(out),
                                      "--plot", str(plot), "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "route()" in result.output and "decisions/s" in result.output
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["machine"]["cpus"] >= 1 and written["machine"]["versions"]["chromadb"]
    [size] = written["sizes"]
    imported = size["import"]
    assert size["records"] == imported["records"] == imported["added"] == 2000 and size["search"] == "exact"
    assert imported["records_per_s"] > 0 and imported["disk_bytes"] > 0
    assert 0 < imported["rss_bytes"] <= imported["peak_rss_bytes"]
    assert size["fresh_start"]["open_s"] > 0 and size["fresh_start"]["first_route_s"] > 0
    routes = size["routes"]
    assert routes["refused"] == 0
    for stage in STAGES:
        for clock in ("wall_ms", "cpu_ms"):
            summary = routes[stage][clock]
            assert summary["n"] == 20 and 0 <= summary["p50"] <= summary["p90"] <= summary["p99"]
    assert routes["route"]["wall_ms"]["p50"] >= routes["lookup"]["wall_ms"]["p50"] > 0
    assert routes["call"]["wall_ms"]["n"] == routes["call"]["process_cpu_ms"]["n"] == 20
    concurrency = written["concurrency"]
    assert concurrency["records"] == 2000 and concurrency["embedder"] == "hashing-384"
    assert concurrency["routes"]["embedding"]["cpu_ms"]["n"] == 20
    assert [level["in_flight"] for level in concurrency["throughput"]] == [1, 4]
    assert all(level["decisions"] == 20 and level["decisions_per_s"] > 0 for level in concurrency["throughput"])
    assert written["proxy"] is None and set(written["phase_seconds"]) == {"import_2000", "routes_2000", "concurrency"}
    assert plot.read_bytes().startswith(b"\x89PNG")
