"""End to end on real data with the real offline MiniLM: import history, route under tight budgets, restart."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from llm_router_plugin import (
    BudgetExhaustedError,
    Router,
    RouterConfig,
    SentenceTransformerEmbedder,
    bundled_path,
    read_data,
)
from llm_router_plugin.cli import app
from llm_router_plugin.dataset import DataFile
from llm_router_plugin.pricing import read_prices

pytestmark = pytest.mark.integration

STREAM = 300
HISTORY = 1200  # enough neighbours for real estimates, small enough to embed in well under a minute


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(threads=2)


@pytest.fixture(scope="module")
def split() -> tuple[DataFile, DataFile]:
    data = read_data(bundled_path())
    order = np.random.default_rng(42).permutation(len(data.rows))
    rows = [data.rows[i] for i in order]
    history = DataFile(data.path, data.models, rows[STREAM : STREAM + HISTORY], {})
    stream = DataFile(data.path, data.models, rows[:STREAM], {})
    return history, stream


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, split: tuple[DataFile, DataFile],
             embedder: SentenceTransformerEmbedder) -> Path:
    folder = tmp_path_factory.mktemp("router")
    router = Router(config(folder, {}), embedder=embedder)
    report = router.import_history(split[0])
    assert report.added == len(split[0].rows)
    return folder


def config(folder: Path, budgets: dict[str, float]) -> RouterConfig:
    models = read_data(bundled_path()).models
    prices = read_prices(bundled_path("routerbench_prices.json"))  # the list prices, as an operator configures them
    return RouterConfig.from_dict({
        "data_dir": str(folder), "warmup_queries": 25, "expected_queries": STREAM,
        "deployments": [{"name": m, "usd_budget": budgets.get(m, 0.01), "input_usd_per_mtok":
                         prices[m].input_usd_per_mtok, "output_usd_per_mtok": prices[m].output_usd_per_mtok}
                        for m in models],
    })


def test_routes_real_queries_within_tight_budgets_and_survives_restart(
    data_dir: Path, split: tuple[DataFile, DataFile], embedder: SentenceTransformerEmbedder
) -> None:
    stream = split[1].rows
    # Tight: the cost of sending the whole stream to the cheapest model, split evenly.
    cheapest = min(split[1].models, key=lambda m: sum(r.outcomes[m].cost_usd or 0 for r in stream))
    total = sum(r.outcomes[cheapest].cost_usd or 0 for r in stream)
    budgets = {m: total / len(split[1].models) for m in split[1].models}
    router = Router(config(data_dir, budgets), embedder=embedder)
    served, quality, exhausted, phases = 0, 0.0, 0, set()
    overrun: dict[str, float] = defaultdict(float)  # by how much calls cost more than the router reserved for them
    for row in stream:
        try:
            decision = router.route(row.prompt)
        except BudgetExhaustedError:
            exhausted += 1
            continue
        phases.add(decision.phase)
        outcome = row.outcomes[decision.model]
        router.record(decision.id, decision.prompt_tokens, 0, cost_usd=outcome.cost_usd)
        overrun[decision.deployment] += max(0.0, (outcome.cost_usd or 0.0) - decision.reserved["usd"])
        served += 1
        quality += outcome.quality or 0.0

    status = router.status()
    # A deployment only takes a query its remaining budget covers at the reserved (high-side) cost; a call that costs
    # more than that (rare: above 1.5 x its costliest neighbour) overshoots by no more than its excess.
    for deployment in status.deployments:
        assert deployment.spent["usd"] <= deployment.limits["usd"] + overrun[deployment.name] + 1e-12, deployment.name
    assert "learned" in phases
    assert status.phase == "learned"
    assert any(w["usd"] > 0 for w in (d.weights for d in status.deployments))  # some budget binds
    spent = sum(d.spent["usd"] for d in status.deployments)
    # The budget is put to use, not left on the table. Not all of it: a deployment is only chosen while its remaining
    # budget covers the costliest neighbour's cost plus the margin, and the priciest models' budgets cover about one
    # query here.
    assert spent >= 0.5 * sum(budgets.values())
    assert quality / served > 0.5  # better than a coin on mostly multiple-choice tasks

    restarted = Router(config(data_dir, budgets), embedder=embedder).status()
    assert [d.spent for d in restarted.deployments] == [d.spent for d in status.deployments]
    assert [d.weights for d in restarted.deployments] == [d.weights for d in status.deployments]
    assert restarted.decisions == status.decisions
    assert restarted.history_size == status.history_size


def test_cli_route_shows_estimates_for_every_deployment(data_dir: Path, tmp_path: Path) -> None:
    default = yaml.safe_load(bundled_path("default_router.yaml").read_text())
    default["data_dir"] = str(data_dir)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(default))
    result = CliRunner().invoke(app, ["route", "Write a python function that reverses a list.", "--json",
                                      "--config", str(path)])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert len(decision["candidates"]) == len(default["deployments"])
    assert all(c["usd"] > 0 for c in decision["candidates"])  # recorded costs reached the estimates
