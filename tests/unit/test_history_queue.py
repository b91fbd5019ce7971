"""A Chroma server that is down at start or goes away mid-traffic: the router starts and routes all the same, and
every outcome (with its feedback score) reaches history once the server is back.

Real ``chroma run`` servers on 127.0.0.1, started by the test on a free port and stopped by their PID.
"""

from __future__ import annotations

import logging
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings

from llm_router_plugin import HashingEmbedder, Router, RouterConfig
from llm_router_plugin import history as history_module
from llm_router_plugin import outcomes as outcomes_module
from llm_router_plugin.history import ChromaHistory, decode_outcomes
from llm_router_plugin.testing import LOOPBACK, ChromaServer, free_port
from tests.conftest import topic_history, topic_prompt

DEGRADED = "history unreachable: estimated from each model's cached mean"
COLLECTION = "served-history"


@pytest.fixture(autouse=True)
def _retry_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect and write queued outcomes on every call, not every few seconds: the tests do not wait."""
    monkeypatch.setattr(history_module, "CONNECT_RETRY_S", 0.0)
    monkeypatch.setattr(outcomes_module, "HISTORY_RETRY_S", 0.0)


def server_config(port: int, data_dir: Path) -> RouterConfig:
    return RouterConfig.from_dict({
        "data_dir": str(data_dir), "embedding_model": "hashing-64", "warmup_queries": 50,
        "estimator": {"region_weight": 0},  # 60 records: a pool of 50 would span every topic
        "chroma_host": LOOPBACK, "chroma_port": port, "collection": COLLECTION,
        "deployments": [
            {"name": "big", "model": "big-model", "token_budget": 50_000},
            {"name": "small", "model": "small-model", "token_budget": 50_000},
        ],
    })


def stored(port: int) -> dict[str, dict[str, list[float]]]:
    """Every record on the server, id → its outcomes by profile, read with a client of its own."""
    client = chromadb.HttpClient(host=LOOPBACK, port=port, settings=Settings(anonymized_telemetry=False))
    got = client.get_collection(COLLECTION, embedding_function=None).get(include=["metadatas"])
    metadatas = got["metadatas"] or []
    return {record_id: decode_outcomes(meta) for record_id, meta in zip(got["ids"], metadatas, strict=True)}


def test_a_router_starts_before_its_chroma_server_and_learns_once_it_is_up(
    tmp_path: Path, embedder: HashingEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there yet
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        router = Router(server_config(port, tmp_path / "router"), embedder=embedder)
    assert any(f"{LOOPBACK}:{port}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    outage = router.route(topic_prompt("math", 1))
    assert DEGRADED in outage.reason
    router.record(outage.id, prompt_tokens=outage.prompt_tokens, completion_tokens=100)
    status = router.status()  # must not fail while the store is down
    assert status.history_size is None
    assert status.history_pending == 1

    with ChromaServer(tmp_path / "chroma-server", port=port):
        history = topic_history(embedder)
        ChromaHistory(host=LOOPBACK, port=port, collection=COLLECTION).upsert(history)
        served = router.route(topic_prompt("math", 2))
        assert "history unreachable" not in served.reason
        assert served.deployment == "big"  # the neighbours on the server say only big answers math
        assert outage.id in stored(port)  # the outcome recorded during the outage was written
        status = router.status()
        assert status.history_pending == 0
        assert status.history_size == len(history) + 1


def test_outcomes_and_scores_given_while_the_server_is_down_reach_history_once(
    tmp_path: Path, embedder: HashingEmbedder
) -> None:
    chroma = ChromaServer(tmp_path / "chroma-server").start()
    try:
        router = Router(server_config(chroma.port, tmp_path / "router"), embedder=embedder)
        history = topic_history(embedder)
        router.history.upsert(history)
        before = router.route(topic_prompt("chat", 1))
        router.record(before.id, prompt_tokens=before.prompt_tokens, completion_tokens=100)  # learned, no score yet
        assert before.id in stored(chroma.port)
    finally:
        chroma.stop()  # by its PID: the store is gone mid-traffic

    router.feedback(before.id, 0.75)  # its record is in history: the score waits for the server
    recorded = router.route(topic_prompt("code", 1))
    router.record(recorded.id, prompt_tokens=recorded.prompt_tokens, completion_tokens=100)
    router.feedback(recorded.id, 0.25)  # after its record, whose write failed too
    rated = router.route(topic_prompt("math", 1))
    router.feedback(rated.id, 0.5)  # before its record
    router.record(rated.id, prompt_tokens=rated.prompt_tokens, completion_tokens=100)
    assert router.status().history_pending == 3

    with ChromaServer(tmp_path / "chroma-server", port=chroma.port):  # same port, same persistence folder
        router.route(topic_prompt("chat", 2))
        assert router.status().history_pending == 0
        records = stored(chroma.port)
    assert len(records) == len(history) + 3  # each outcome once, nothing lost
    scores = {d.id: records[d.id][d.model][0] for d in (before, recorded, rated)}
    assert scores == {before.id: 0.75, recorded.id: 0.25, rated.id: 0.5}
    for decision in (before, recorded, rated):
        assert records[decision.id][decision.model][2] == 100
