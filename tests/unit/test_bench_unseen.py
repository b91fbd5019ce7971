"""``llm-router bench --unseen``: the UniRoute protocol on the budgeted replay, and its deferral-curve metric."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_router_plugin.bench.unseen import UnseenOptions, deferral_area, deferral_curve
from llm_router_plugin.cli import app
from tests.conftest import TOPICS

# Per topic: quality of (strong, weak, chatty); chatty is as good as strong on chat only, at the weak one's price.
QUALITY = {"math": (1, 0, 0), "code": (1, 1, 0), "chat": (1, 0, 1)}
COST = {"strong": 0.01, "weak": 0.001, "chatty": 0.001}


def synthetic(path: Path, per_topic: int = 60) -> Path:
    rng = np.random.default_rng(0)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "eval_name", "split", "sample_id",
                         *(f"{m}{suffix}" for m in COST
                           for suffix in ("", "|total_cost", "|prompt_tokens", "|completion_tokens"))])
        for topic, qualities in QUALITY.items():
            for i in range(per_topic):
                cells = []
                for model, quality in zip(COST, qualities, strict=True):
                    cells += [quality, COST[model] * rng.uniform(0.8, 1.2), 20, 30]
                writer.writerow([f"{TOPICS[topic]} {i}", topic, "test", f"{topic}-{i}", *cells])
    return path


def test_the_unseen_protocol_prints_every_policy_and_writes_json(tmp_path: Path) -> None:
    data = synthetic(tmp_path / "synthetic.csv.gz")
    out = tmp_path / "unseen.json"
    result = CliRunner().invoke(app, [
        "bench", str(data), "--unseen", "0.34", "--seeds", "1,2", "--splits", "uniform", "--profile-size", "15",
        "--clusters", "3", "--embedder", "hashing-64", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    for label in ("ours, full history", "ours, unseen models onboarded", "ZeroRouter", "kNN on profile prompts"):
        assert label in result.output
    numbers = json.loads(out.read_text())
    assert [t["seed"] for t in numbers["trials"]] == [1, 2]
    for trial in numbers["trials"]:
        assert len(trial["unseen"]) == 1 and trial["profile_size"] == 15
        runs = trial["runs"]["uniform"]
        assert runs["ours-full"]["quality"] <= runs["c_opt"]["quality"] + 1e-9
        assert set(trial["deferral_area"]) == {"ours-full", "ours-onboarded", "zero-router", "knn-profile"}
    assert numbers["mean"]["ours-full"]["vs_full"] == pytest.approx(1.0)
    assert numbers["mean"]["ours-onboarded"]["overspend_usd"] == 0.0  # budgets hold for onboarded models too


def test_options_reject_a_share_outside_zero_and_one() -> None:
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="unseen"):
            UnseenOptions(fraction=fraction)
    with pytest.raises(ValueError, match="seeds"):
        UnseenOptions(seeds=())


def test_the_deferral_curve_spans_cheapest_to_best_and_perfect_estimates_have_the_larger_area() -> None:
    rng = np.random.default_rng(0)
    quality = rng.integers(0, 2, size=(200, 3)).astype(float)
    cost = np.tile([1.0, 2.0, 4.0], (200, 1))
    perfect = deferral_curve(quality, cost, quality, cost)
    blind = deferral_curve(np.full_like(quality, 0.5), cost, quality, cost)
    assert perfect[0] == (pytest.approx(cost[np.arange(200), np.argmax(quality, axis=1)].mean()),
                          pytest.approx(quality.max(axis=1).mean()))
    assert perfect[-1][0] == pytest.approx(1.0)  # λ = ∞: the cheapest model everywhere
    floor = quality[:, 0].mean()
    assert deferral_area(perfect, 1.0, 4.0, floor) > deferral_area(blind, 1.0, 4.0, floor)
    assert deferral_area([(1.0, 0.3)], 1.0, 4.0, 0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="high"):
        deferral_area(perfect, 2.0, 2.0, floor)
