"""``llm-router bench`` end to end on a small synthetic data set (hashing embedder, one seed, two splits)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from llm_router_plugin.cli import app
from tests.conftest import TOPICS

# Per topic: quality of (strong, weak), like the topic history of the router tests; strong costs 10x weak.
QUALITY = {"math": (1, 0), "code": (1, 1), "chat": (1, 0)}
COST = {"strong": 0.01, "weak": 0.001}


def synthetic(path: Path, per_topic: int = 120) -> Path:
    rng = np.random.default_rng(0)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "eval_name", "split", "sample_id",
                         "strong", "strong|total_cost", "weak", "weak|total_cost"])
        for topic, (strong, weak) in QUALITY.items():
            for i in range(per_topic):
                noise = rng.uniform(0.8, 1.2, size=2)
                writer.writerow([f"{TOPICS[topic]} {i}", topic, "test", f"{topic}-{i}",
                                 strong, COST["strong"] * noise[0], weak, COST["weak"] * noise[1]])
    return path


def test_bench_prints_the_tables_and_writes_json_and_plot(tmp_path: Path) -> None:
    data = synthetic(tmp_path / "synthetic.csv.gz")
    out, plot = tmp_path / "out.json", tmp_path / "plot.png"
    result = CliRunner().invoke(app, [
        "bench", str(data), "--seeds", "7", "--splits", "uniform,perf", "--embedder", "hashing-64",
        "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--plot", str(plot),
    ])
    assert result.exit_code == 0, result.output
    assert "MEAN over 2 runs" in result.output
    for label in ("random", "greedy-perf", "BatchSplit", "PORT-reference", "ours", "Ĉ_opt", "C_opt"):
        assert label in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    numbers = json.loads(out.read_text())
    assert [(r["seed"], r["split"]) for r in numbers["runs"]] == [(7, "uniform"), (7, "perf")]
    for run in numbers["runs"]:
        ours, c_opt = run["results"]["ours"], run["results"]["c_opt"]
        assert ours["overspend_usd"] == 0.0  # the router's reservations keep every request within budget
        assert ours["quality"] <= run["c_opt_lp_objective"] + 1e-9  # nothing beats the offline LP on the truth
        assert c_opt["quality"] >= run["results"]["random"]["quality"]
    assert numbers["sweep"]  # the plot's budget multipliers ran


def test_a_warm_cache_is_reused(tmp_path: Path) -> None:
    data = synthetic(tmp_path / "synthetic.csv.gz", per_topic=40)
    args = ["bench", str(data), "--seeds", "1", "--splits", "uniform", "--embedder", "hashing-64",
            "--cache-dir", str(tmp_path / "cache"), "--policies", "random,ours", "--no-per-run"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert cached[0].stat().st_mtime_ns == stamp  # read, not recomputed
    assert "embedding synthetic.csv.gz" in first.output and "embedding" not in second.output
