"""The LiteLLM examples run end to end (few prompts, hashing embedder) and report what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"
DEPLOYMENTS = ["chat-gpt-4", "chat-gpt-3.5", "chat-mixtral", "chat-mistral-7b"]
STRATEGIES = ["llm-router", "simple-shuffle", "cost-based-routing", "usage-based-routing-v2"]


def run_example(script: str, data_dir: Path, *extra: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "ORT_DISABLE_TELEMETRY": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--queries", "12", "--embedding-model", "hashing-256",
         "--data-dir", str(data_dir), *extra],
        capture_output=True, text=True, env=env, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sdk_example_routes_prompts_and_reports_spend_and_quality(tmp_path: Path) -> None:
    out = run_example("litellm_sdk.py", tmp_path / "demo")
    answered = [line for line in out.splitlines() if "→ chat-" in line]
    assert len(answered) == 12
    for name in DEPLOYMENTS:
        assert f"{name} " in out  # a row in the routing table and in the budget table
    assert "served quality:" in out and " of 12 prompts" in out


def test_proxy_demo_compares_the_router_with_litellm_strategies_under_the_same_budgets(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    (data_dir / "stale").mkdir(parents=True)  # a run starts from an empty folder: fresh budgets, same history
    out = run_example("litellm_proxy/run_demo.py", data_dir)
    table = out[out.index("strategy ") :]
    for strategy in STRATEGIES:
        row = next(line for line in table.splitlines() if line.startswith(strategy + " "))
        quality, served, refused = row.split()[1:4]
        assert 0 <= float(quality) <= 1 and int(served) + int(refused) == 12
        assert (data_dir / f"config-{strategy}.yaml").is_file()
    for name in DEPLOYMENTS:
        assert name in table  # a column of the spend-per-deployment table
    assert not (data_dir / "stale").exists()
    plot = data_dir / "demo.png"
    assert f"plot: {plot}" in out and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "next: llm-router report --proxy-config" in out.split("plot: ")[1]  # the last screen: what to try next
