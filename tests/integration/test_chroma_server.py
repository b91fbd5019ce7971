"""The router on a real Chroma server (``chroma_host``), started on loopback by the test and stopped by its PID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_router_plugin import HashingEmbedder, Router, RouterConfig
from llm_router_plugin.testing import ChromaServer
from tests.conftest import topic_history, topic_prompt

pytestmark = pytest.mark.integration


def server_config(chroma: ChromaServer, data_dir: Path) -> RouterConfig:
    return RouterConfig.from_dict({
        "data_dir": str(data_dir), "embedding_model": "hashing-64", "warmup_queries": 5,
        "estimator": {"region_weight": 0},  # 60 records: a pool of 50 would span every topic
        "chroma_host": chroma.host, "chroma_port": chroma.port, "collection": "served-history",
        "deployments": [
            {"name": "big", "model": "big-model", "token_budget": 50_000},
            {"name": "small", "model": "small-model", "token_budget": 50_000},
        ],
    })


def test_history_lives_on_the_server_and_outlives_the_router(tmp_path: Path, embedder: HashingEmbedder) -> None:
    with ChromaServer(tmp_path / "chroma-server") as chroma:
        pid = chroma.pid
        router = Router(server_config(chroma, tmp_path / "router"), embedder=embedder)
        router.history.upsert(topic_history(embedder))
        assert not (tmp_path / "router" / "chroma").exists()  # nothing embedded: the server holds the history

        decision = router.route(topic_prompt("math", 1))
        assert decision.deployment == "big"  # the neighbours the server returned say only big answers math
        router.record(decision.id, prompt_tokens=decision.prompt_tokens, completion_tokens=800, quality=1.0)
        size = router.history.count()
        assert size == len(topic_history(embedder)) + 1  # the served outcome went to the server

        # Another router process would see the same store: a fresh client on the same server.
        again = Router(server_config(chroma, tmp_path / "router"), embedder=embedder)
        assert again.status().history_size == size
        assert again.route(topic_prompt("code", 1)).deployment == "small"
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by its PID


def test_routing_goes_on_when_the_server_goes_away(tmp_path: Path, embedder: HashingEmbedder) -> None:
    chroma = ChromaServer(tmp_path / "chroma-server").start()
    try:
        config = server_config(chroma, tmp_path / "router").model_copy(update={"exact_search_max": 0})
        router = Router(config, embedder=embedder)  # exact_search_max 0: every query asks the server's index
        router.history.upsert(topic_history(embedder))
        served = router.route(topic_prompt("math", 1))
        assert served.deployment == "big" and "history unreachable" not in served.reason
        router.record(served.id, prompt_tokens=served.prompt_tokens, completion_tokens=800, quality=1.0)
        pid = chroma.pid
    finally:
        chroma.stop()  # by its PID: the store is gone mid-traffic
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    spent_before = _tokens_spent(router)
    degraded = [router.route(topic_prompt(topic, 2)) for topic in ("math", "code")]
    for decision in degraded:
        assert "history unreachable: estimated from each model's cached mean" in decision.reason
        settlement = router.record(decision.id, prompt_tokens=decision.prompt_tokens, completion_tokens=100)
        assert settlement is not None
        logged = router.decisions.get(decision.id)
        assert logged is not None and logged.status == "recorded"
    assert _tokens_spent(router) == spent_before + sum(d.prompt_tokens + 100 for d in degraded)


def _tokens_spent(router: Router) -> float:
    """Settled tokens over every deployment, read from the ledger (which does not depend on the history store)."""
    now = router._clock()
    return sum(router.ledger.usage(d.name, router._window(d, now), now)[0]["tokens"] for d in router.config.deployments)
