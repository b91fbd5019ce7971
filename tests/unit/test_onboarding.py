"""``llm-router onboard``: a model's profile answers become its history outcomes; bad files write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from llm_router_plugin import ChromaHistory, HashingEmbedder
from llm_router_plugin.cli import app
from llm_router_plugin.onboarding import onboard, read_results
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet
from tests.conftest import topic_history, topic_prompt

NEW = "new-model"


@pytest.fixture
def profile(tmp_path: Path, embedder: HashingEmbedder) -> ProfileSet:
    # Two prompts from the topic history (ids "math-0", "chat-0") and one that history does not hold.
    prompts = (
        ProfilePrompt(id="math-0", prompt=topic_prompt("math", 0), task="math", cluster=0),
        ProfilePrompt(id="chat-0", prompt=topic_prompt("chat", 0), task="chat", cluster=1),
        ProfilePrompt(id="extra-1", prompt="translate this sentence into french please", task="mt", cluster=1),
    )
    return ProfileSet(prompts, np.eye(2, embedder.dimension, dtype=np.float32), embedder.name)


@pytest.fixture
def store(tmp_path: Path, embedder: HashingEmbedder) -> ChromaHistory:
    history = ChromaHistory(tmp_path / "chroma")
    history.upsert(topic_history(embedder))
    return history


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [
    {"id": "math-0", "model": NEW, "answer": "x", "quality": 0.0, "prompt_tokens": 20, "completion_tokens": 40,
     "cost_usd": 0.001, "latency_s": 0.2, "error": None},
    {"prompt": topic_prompt("chat", 0), "quality": 1.0, "prompt_tokens": 20, "completion_tokens": 60},
    {"id": "extra-1", "quality": None, "prompt_tokens": 9, "completion_tokens": 12},
    {"id": "math-0", "error": "upstream timed out"},  # a failed retry of a prompt answered above: skipped
]


def test_onboarding_writes_each_answer_into_history_once(
    tmp_path: Path, profile: ProfileSet, store: ChromaHistory, embedder: HashingEmbedder
) -> None:
    results = read_results(_write(tmp_path / "r.jsonl", ROWS), profile, NEW)
    assert not results.errors and results.skipped == 1
    before = store.count()
    report = onboard(NEW, results, store, embedder)
    assert (report.updated, report.added, report.scored, report.skipped) == (2, 1, 2, 1)
    assert store.count() == before + 1  # the prompt history did not hold was added
    means = store.profile_means([NEW])[0]
    assert means[0] == pytest.approx(0.5)  # quality: 0 and 1 (the unscored answer adds tokens only)
    assert means[2] == pytest.approx((40 + 60 + 12) / 3)
    assert store.profile_means(["big-model"])[0][0] == pytest.approx(0.9333, abs=1e-3)  # others untouched

    again = onboard(NEW, read_results(tmp_path / "r.jsonl", profile, NEW), store, embedder)
    assert (again.updated, again.added) == (3, 0)
    assert store.count() == before + 1
    assert store.profile_means([NEW])[0] == pytest.approx(means, nan_ok=True)


@pytest.mark.parametrize(("row", "message"), [
    ({"id": "nope", "quality": 1.0}, "not a prompt of the profile set"),
    ({"prompt": "an unknown prompt", "quality": 1.0}, "not a prompt of the profile set"),
    ({"quality": 1.0}, "names no profile prompt"),
    ({"id": "math-0", "quality": 1.5}, "quality"),
    ({"id": "math-0", "quality": "NaN"}, "quality: must be a number in [0, 1]"),
    ({"id": "math-0", "completion_tokens": -3}, "completion_tokens"),
    ({"id": "math-0", "completion_tokens": 2.5}, "completion_tokens: must be a whole"),
    ({"id": "math-0", "cost_usd": -1}, "cost_usd"),
    ({"id": "math-0", "model": "other-model", "quality": 1.0}, "not 'new-model'"),
    ("just a string", "not a JSON object"),
    ({"id": "math-0"}, "no outcome"),
    ({"id": "math-0", "quality": None, "prompt_tokens": ""}, "no outcome"),
    ({"id": "math-0", "prompt_tokens": 10**400}, "prompt_tokens"),
    ({"id": "math-0", "cost_usd": 10**400}, "cost_usd"),
])
def test_an_invalid_row_is_reported_by_line_and_nothing_is_written(
    tmp_path: Path, profile: ProfileSet, store: ChromaHistory, embedder: HashingEmbedder, row: Any, message: str
) -> None:
    results = read_results(_write(tmp_path / "r.jsonl", [ROWS[0], row]), profile, NEW)
    assert list(results.errors) == [2] and message in results.errors[2]
    with pytest.raises(ValueError, match="nothing onboarded"):
        onboard(NEW, results, store, embedder)
    assert np.isnan(store.profile_means([NEW])[0]).all()


def test_a_csv_with_the_same_columns_is_accepted(tmp_path: Path, profile: ProfileSet) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,quality,prompt_tokens,completion_tokens,cost_usd\nmath-0,1,10,20,\nchat-0,,10,20,0.5\n")
    results = read_results(path, profile, NEW)
    assert not results.errors
    assert results.outcomes["math-0"][1].quality == 1.0 and results.outcomes["chat-0"][1].cost_usd == 0.5
    assert results.outcomes["chat-0"][1].quality is None


def test_a_file_in_the_unified_data_schema_is_accepted(tmp_path: Path, profile: ProfileSet) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f"prompt,eval_name,{NEW},{NEW}|total_cost,{NEW}|completion_tokens,other-model\n"
                    f"{topic_prompt('math', 0)},math,0,0.002,40,1\n")
    results = read_results(path, profile, NEW)
    assert not results.errors
    outcome = results.outcomes["math-0"][1]
    assert (outcome.quality, outcome.cost_usd, outcome.completion_tokens) == (0.0, 0.002, 40)


def test_the_command_onboards_and_a_bad_file_exits_with_the_line(
    tmp_path: Path, profile: ProfileSet, embedder: HashingEmbedder
) -> None:
    profile_path = tmp_path / "profile.jsonl"
    profile.save(profile_path)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "embedding_model": embedder.name, "profile_set": str(profile_path),
        "deployments": [{"name": "a", "model": "big-model"}],
    }))
    good = _write(tmp_path / "r.jsonl", ROWS)
    result = CliRunner().invoke(app, ["onboard", NEW, str(good), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "onboarded new-model: 3 profile outcome(s) (2 scored" in result.output
    assert "no deployment in the config serves model 'new-model'" in result.output

    unsized = _write(tmp_path / "unsized.jsonl", [{"id": "math-0", "quality": 1}])
    result = CliRunner().invoke(app, ["onboard", NEW, str(unsized), "-c", str(config)])
    assert result.exit_code == 0 and "no answer has token counts" in result.output

    bad = _write(tmp_path / "bad.jsonl", [ROWS[0], {"id": "nope", "quality": 1}])
    result = CliRunner().invoke(app, ["onboard", NEW, str(bad), "-c", str(config)])
    assert result.exit_code == 2
    assert "line 2" in result.output and "nothing onboarded" in result.output
