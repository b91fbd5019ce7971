"""Adding a model the history does not know, as a user does: build a profile set, collect the model's answers from a
real (replay) endpoint with ``profile run``, ``onboard`` them, and watch the router send it the queries it is good at.

The held-out model is claude-v2 of the RouterBench sample: better than the two known deployments on coding (mbpp),
worse on reasoning (arc-challenge) and pronoun resolution (winogrande). The answers' scores come from the data.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from llm_router_plugin import ChromaHistory, Router, RouterConfig, SentenceTransformerEmbedder, bundled_path, read_data
from llm_router_plugin.cli import app
from llm_router_plugin.dataset import DataFile, DataRow, import_history
from llm_router_plugin.profiles import ProfilePrompt
from llm_router_plugin.replay import ReplayBook, ReplayServer

pytestmark = pytest.mark.integration

NEW = "claude-v2"
KNOWN = ["mistralai/mixtral-8x7b-chat", "meta/code-llama-instruct-34b-chat"]
HISTORY = 1200
STREAM = 240


@cache
def _quality_by_prompt() -> dict[str, float | None]:
    return {row.prompt: (row.outcomes[NEW].quality if NEW in row.outcomes else None)
            for row in read_data(bundled_path()).rows}


def score_from_data(prompt: ProfilePrompt, answer: str) -> float | None:
    """The scorer the test supplies: the score the held-out model got on this prompt in the data."""
    return _quality_by_prompt().get(prompt.prompt)


def _without(rows: list[DataRow], model: str) -> list[DataRow]:
    return [DataRow(r.line, r.prompt, r.task, r.split, r.sample_id,
                    {m: o for m, o in r.outcomes.items() if m != model}, {}) for r in rows]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DataRow], SentenceTransformerEmbedder]:
    folder = tmp_path_factory.mktemp("onboard")
    data = read_data(bundled_path())
    order = np.random.default_rng(7).permutation(len(data.rows))
    rows = [data.rows[i] for i in order]
    config = folder / "router.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(folder / "data"), "store_prompts": True, "exploration": 0,
        "profile_set": str(folder / "profile.jsonl"), "embedding_threads": 2,
        "deployments": [{"name": m.split("/")[-1], "model": m} for m in [*KNOWN, NEW]],
    }))
    embedder = SentenceTransformerEmbedder(threads=2)
    history = DataFile(data.path, data.models, _without(rows[STREAM : STREAM + HISTORY], NEW), {})
    cfg = RouterConfig.from_yaml(config)
    import_history(history, ChromaHistory.from_config(cfg), embedder, store_prompts=True)
    return config, rows[:STREAM], embedder


def _share_to_new(config: Path, stream: list[DataRow], embedder: SentenceTransformerEmbedder) -> dict[str, float]:
    router = Router(RouterConfig.from_yaml(config), embedder=embedder)
    chosen: Counter[tuple[str, bool]] = Counter()
    for row in stream:
        decision = router.route(row.prompt)
        router.record(decision.id, 0, 0, error="routing check only")
        chosen[row.task, decision.model == NEW] += 1
    return {task: chosen[task, True] / max(1, chosen[task, True] + chosen[task, False]) for task, _ in chosen}


def test_a_model_onboarded_from_a_replay_endpoint_gets_the_queries_its_profile_is_good_at(
    setup: tuple[Path, list[DataRow], SentenceTransformerEmbedder], tmp_path: Path
) -> None:
    config, stream, embedder = setup
    runner = CliRunner()
    profile = Path(yaml.safe_load(config.read_text())["profile_set"])
    built = runner.invoke(app, ["profile", "build", "-c", str(config), "--size", "80", "--clusters", "8",
                                "--out", str(profile)])
    assert built.exit_code == 0, built.output

    status = runner.invoke(app, ["status", "-c", str(config)])
    assert f"no history for model {NEW}" in status.output
    before = _share_to_new(config, stream, embedder)

    server = ReplayServer(ReplayBook.from_files(), port=0).start()  # answers as the data's models did
    try:
        results = tmp_path / "results.jsonl"
        collected = runner.invoke(app, [
            "profile", "run", "--base-url", server.url, "--model", NEW, "--profile", str(profile),
            "--out", str(results), "--scorer", f"{__name__}:score_from_data", "--concurrency", "4",
            "--prices", str(bundled_path("routerbench_prices.json")),
        ])
    finally:
        server.stop()
    assert collected.exit_code == 0, collected.output
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 80 and all(line["completion_tokens"] and line["cost_usd"] for line in lines)
    assert sum(line["quality"] is not None for line in lines) == sum(
        _quality_by_prompt().get(line["prompt"]) is not None for line in lines)

    onboarded = runner.invoke(app, ["onboard", NEW, str(results), "-c", str(config)])
    assert onboarded.exit_code == 0, onboarded.output
    assert f"no history for model {NEW}" not in runner.invoke(app, ["status", "-c", str(config)]).output
    after = _share_to_new(config, stream, embedder)

    # Before: a prior of 0.5 below both known models' history. After: coding goes to it, the rest does not.
    assert after["mbpp"] >= 0.6 > before["mbpp"]
    assert after["arc-challenge"] <= 0.2 and after["winogrande"] <= 0.2
