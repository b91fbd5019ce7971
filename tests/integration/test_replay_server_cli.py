"""``llm-router replay-server`` serves the shipped RouterBench sample with usage that reproduces its costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llm_router_plugin.dataset import bundled_path, read_data

pytestmark = pytest.mark.integration


def test_replay_server_command_answers_as_the_recorded_models() -> None:
    row = next(r for r in read_data(bundled_path()).rows if r.task == "mbpp")
    command = [str(Path(sys.executable).with_name("llm-router")), "replay-server", "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        url = banner.split(" at ")[1].split()[0]
        body = httpx.post(f"{url}/chat/completions", timeout=30, json={
            "model": "gpt-4-1106-preview", "messages": [{"role": "user", "content": row.prompt}]}).json()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert "11 models" in banner
    usage = body["usage"]
    # Priced at gpt-4-1106-preview's $10 / $30 per million tokens, the usage costs what RouterBench recorded.
    cost = (usage["prompt_tokens"] * 10 + usage["completion_tokens"] * 30) / 1e6
    assert cost == pytest.approx(row.outcomes["gpt-4-1106-preview"].cost_usd, abs=30 / 1e6)
    assert usage["completion_tokens"] > 10  # a code answer, not one token
