import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin.bench.protocol import (
    SPLITS,
    budgets,
    build_problem,
    parse_list,
    parse_seeds,
    split_rows,
    split_weights,
    total_budget,
)
from llm_router_plugin.dataset import read_data
from llm_router_plugin.pricing import read_prices


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(",".join(header) + "\n")
        for row in rows:
            fh.write(",".join(row) + "\n")
    return path


@pytest.fixture
def costed(tmp_path: Path) -> Path:
    header = ["prompt", "eval_name", "split", "sample_id", "a", "a|total_cost", "b", "b|total_cost"]
    rows = [
        ["q one", "t", "x", "1", "1", "0.001", "0", "0.01"],
        ["q two", "t", "x", "2", "0", "0.002", "1", "0.02"],
        ["q three", "t", "x", "3", "", "0.001", "1", "0.01"],  # missing score: dropped
        ["q four", "t", "x", "4", "1", "0.003", "1", ""],  # missing cost: dropped
    ]
    return write_csv(tmp_path / "costed.csv.gz", header, rows)


def test_incomplete_rows_are_dropped(costed: Path) -> None:
    problem = build_problem(read_data(costed))
    assert problem.models == ("a", "b")
    assert problem.prompts == ("q one", "q two")
    assert problem.dropped == 2
    assert problem.quality.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert problem.cost.tolist() == [[0.001, 0.01], [0.002, 0.02]]
    assert "recorded" in problem.cost_note


def test_costs_come_from_prices_when_the_file_has_none(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "free.csv.gz", ["prompt", "eval_name", "split", "sample_id", "a", "b"],
                     [["x" * 400, "t", "s", "1", "1", "0"]])
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"a": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 9.0, "size": "7B"},
                                  "b": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 9.0}}))
    with pytest.raises(ValueError, match="--prices"):
        build_problem(read_data(data))
    problem = build_problem(read_data(data), read_prices(prices))
    # 400 characters ≈ 100 prompt tokens; no completion tokens in the file.
    assert problem.cost.tolist() == [[pytest.approx(100e-6), pytest.approx(300e-6)]]
    assert "--prices" in problem.cost_note and "no completion tokens" in problem.cost_note


def test_prices_must_cover_every_model_and_be_well_formed(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "free.csv.gz", ["prompt", "eval_name", "split", "sample_id", "a", "b"],
                     [["hello", "t", "s", "1", "1", "0"]])
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"a": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}}))
    with pytest.raises(ValueError, match=r"no price for models \['b'\]"):
        build_problem(read_data(data), read_prices(prices))
    prices.write_text(json.dumps({"a": {"input_usd_per_mtok": "cheap"}}))
    with pytest.raises(ValueError, match="'a' needs numeric"):
        read_prices(prices)


def test_split_is_seeded_disjoint_and_70_30() -> None:
    split = split_rows(1000, seed=42)
    assert len(split.history) == 700 and len(split.test) == 300
    assert not set(split.history) & set(split.test)
    assert sorted([*split.history, *split.test]) == list(range(1000))
    assert np.array_equal(split.test, split_rows(1000, seed=42).test)
    assert not np.array_equal(split.test, split_rows(1000, seed=1).test)


def test_total_budget_is_the_cheapest_model_on_the_test_stream() -> None:
    cost = np.array([[1.0, 0.2], [1.0, 0.3], [9.0, 9.0]])
    assert total_budget(cost, np.array([0, 1]), 1.0) == pytest.approx(0.5)  # model b: 0.2 + 0.3
    assert total_budget(cost, np.array([0, 1]), 2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiplier"):
        total_budget(cost, np.array([0]), 0.0)


def test_split_weights_follow_the_protocol_formulas() -> None:
    quality = np.array([[0.9, 0.4], [0.7, 0.2]])  # means 0.8, 0.3
    cost = np.array([[0.04, 0.01], [0.04, 0.01]])  # means 0.04, 0.01

    def normed(w: list[float]) -> list[float]:
        return (np.array(w) / sum(w)).tolist()

    assert split_weights(quality, cost, "weighted").tolist() == pytest.approx(
        normed([np.sqrt(0.8 / 0.04), np.sqrt(0.3 / 0.01)]))
    assert split_weights(quality, cost, "uniform").tolist() == pytest.approx([0.5, 0.5])
    assert split_weights(quality, cost, "cost").tolist() == pytest.approx(normed([np.sqrt(25), np.sqrt(100)]))
    assert split_weights(quality, cost, "perf").tolist() == pytest.approx(normed([0.8, 0.3]))
    with pytest.raises(ValueError, match="split: unknown"):
        split_weights(quality, cost, "extreme")


@pytest.mark.parametrize("name", SPLITS)
def test_run_budgets_add_up_to_the_total(costed: Path, name: str) -> None:
    problem = build_problem(read_data(costed))
    split = split_rows(problem.size, seed=0)
    limits = budgets(problem, split, name, 1.5)
    assert limits.sum() == pytest.approx(1.5 * problem.cost[split.test].sum(axis=0).min())
    assert np.all(limits > 0)


def test_option_lists_are_checked() -> None:
    assert parse_list("weighted, perf", SPLITS, "--splits") == ["weighted", "perf"]
    with pytest.raises(ValueError, match=r"--splits: unknown \['nope'\]"):
        parse_list("weighted,nope", SPLITS, "--splits")
    assert parse_seeds("42,1") == (42, 1)
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("42,x")
