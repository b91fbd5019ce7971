"""Budgets through a real LiteLLM proxy under load and a crash: 200 concurrent requests, kill -9 mid-traffic, restart.

The proxy runs the example config against the replay upstream with budgets a hundredth of the example's and a
5-second reservation timeout, so that holds the crash left behind expire (and are charged) within the test. Then:
no deployment's ledger holds less than the true cost of the calls it answered, and none spent past its budget by
more than its answered calls cost above what the router had reserved for them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy
from router_litellm_support import example_config, master_key

from llm_router_plugin import DataFile, bundled_path, import_history, read_data
from llm_router_plugin.replay import ReplayBook, ReplayServer

pytestmark = pytest.mark.integration

REQUESTS = 200
KILL_AFTER = 80  # answered requests before the kill -9
TIMEOUT_S = 5.0


def write_config(tmp: Path, upstream: ReplayServer, **deployment_block: Any) -> Path:
    settings = {"data_dir": str(tmp / "router"), "embedding_model": "hashing-256", "warmup_queries": 10,
                "expected_queries": REQUESTS, "reservation_timeout_s": TIMEOUT_S}
    return example_config(tmp / "config.yaml", upstream.url, settings, budget_share=0.01, **deployment_block)


async def flood(proxy: LiteLLMProxy, key: str, prompts: list[str]) -> list[httpx.Response]:
    """Send every prompt at once; kill -9 the proxy once KILL_AFTER have been answered. Returns the answers."""
    answered: list[httpx.Response] = []
    killed = asyncio.Event()

    async def ask(client: httpx.AsyncClient, prompt: str) -> None:
        try:
            response = await client.post(f"{proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                         json={"model": "chat", "messages": [{"role": "user", "content": prompt}]})
        except httpx.TransportError:
            assert killed.is_set()  # only the crash may cut a request off
            return
        if response.status_code == 200 and not killed.is_set():
            answered.append(response)
            if len(answered) >= KILL_AFTER:
                killed.set()
                assert proxy.pid is not None
                os.kill(proxy.pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(ask(client, p) for p in prompts))
    return answered


def test_spend_survives_a_kill_mid_traffic(tmp_path: Path) -> None:
    data = read_data(bundled_path())
    train = [row for row in data.rows if row.split == "train"][:600]
    prompts = [row.prompt for row in random.Random(5).sample([r for r in data.rows if r.split == "test"], REQUESTS)]
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        config = write_config(tmp_path, upstream)
        key = master_key(config)
        adapter = LiteLLMAdapter.from_proxy_config(config)
        import_history(DataFile(data.path, data.models, train, {}), adapter.history, adapter.embedder)
        proxy = LiteLLMProxy(config, log=tmp_path / "proxy.log").start()
        try:
            answered = asyncio.run(flood(proxy, key, prompts))
        finally:
            proxy.stop()  # reaps the killed process (by its PID)
        killed_at = time.monotonic()
        assert len(answered) >= KILL_AFTER
        with LiteLLMProxy(config, log=tmp_path / "proxy-restart.log") as restarted:
            after = httpx.post(f"{restarted.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               timeout=60, json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
            assert after.status_code in (200, 429)  # the restart is clean: it routes (or refuses for budget)
        time.sleep(max(0.0, TIMEOUT_S + 1 - (time.monotonic() - killed_at)))
    finally:
        upstream.stop()

    chat = LiteLLMAdapter.from_proxy_config(config).router("chat")
    assert chat is not None
    true_cost: dict[str, float] = defaultdict(float)
    overrun: dict[str, float] = defaultdict(float)
    for response in answered:
        name, cost = response.headers["x-litellm-model-id"], float(response.headers["x-litellm-response-cost"])
        true_cost[name] += cost
        logged = chat.decisions.get(response.headers["x-llm-router-decision-id"])
        assert logged is not None
        overrun[name] += max(0.0, cost - float(logged.estimates[name]["usd_hold"]))
    status = chat.status()
    assert all(d.reserved["usd"] == 0 for d in status.deployments)  # every hold settled or expired and charged
    for deployment in status.deployments:
        # Calls answered before the kill whose outcome never arrived were charged at their hold.
        assert deployment.spent["usd"] >= true_cost[deployment.name] - 1e-12, deployment.name
        if not deployment.fallback:
            assert deployment.spent["usd"] <= deployment.limits["usd"] + overrun[deployment.name] + 1e-12


def test_a_bad_router_block_stops_the_proxy_at_start(tmp_path: Path) -> None:
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        config = write_config(tmp_path, upstream, token_budgett=5)
        with pytest.raises(RuntimeError, match="token_budgett"):
            LiteLLMProxy(config, log=tmp_path / "proxy.log", startup_timeout=90).start()
    finally:
        upstream.stop()
