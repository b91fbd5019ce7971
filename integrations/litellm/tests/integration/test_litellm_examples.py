"""The two LiteLLM examples run end to end (few prompts, hashing embedder) and report what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"
DEPLOYMENTS = ["chat-gpt-4", "chat-gpt-3.5", "chat-mixtral", "chat-mistral-7b"]


@pytest.mark.parametrize("script", ["litellm_sdk.py", "litellm_proxy/run_demo.py"])
def test_example_routes_prompts_and_reports_spend_and_quality(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "ORT_DISABLE_TELEMETRY": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--queries", "12", "--embedding-model", "hashing-256",
         "--data-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    answered = [line for line in out.splitlines() if "→ chat-" in line]
    assert len(answered) == 12
    for name in DEPLOYMENTS:
        assert f"{name} " in out  # a row in the routing table and in the budget table
    assert "served quality:" in out and " of 12 prompts" in out
