"""Shared fixtures: offline environment, a small deterministic embedder and a router on a temporary folder."""

from __future__ import annotations

import os

# Before anything imports chromadb, onnxruntime or the hub client: stay offline and silent.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_router_plugin import HashingEmbedder, HistoryRecord, ModelOutcome, Router, RouterConfig

TOPICS = {
    "math": "solve the equation integral derivative algebra number proof",
    "code": "write a python function class bug compile test loop",
    "chat": "hello tell me a story about your weekend and the weather",
}
# Per topic: (quality of "big", quality of "small"); big costs 10x small.
QUALITY = {"math": (1.0, 0.0), "code": (1.0, 1.0), "chat": (0.8, 0.7)}


def topic_prompt(topic: str, i: int) -> str:
    """A prompt of a topic; the suffix makes it distinct without changing its neighbourhood much."""
    return f"{TOPICS[topic]} variant {i}"


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(64)


@pytest.fixture
def make_router(tmp_path: Path, embedder: HashingEmbedder) -> Callable[..., Router]:
    """Build a router over two deployments (big, small) with a small topic history, on a fresh folder."""

    def build(history: bool = True, data_dir: Path | None = None, **overrides: Any) -> Router:
        config: dict[str, Any] = {
            "data_dir": str(data_dir or tmp_path / "router"),
            "embedding_model": "hashing-64",
            "warmup_queries": 10,
            # 60 records: a pool of 50 neighbours would span every topic, so no region smoothing here.
            "estimator": {"region_weight": 0},
            "deployments": [
                {"name": "big", "model": "big-model", "token_budget": 20_000},
                {"name": "small", "model": "small-model", "token_budget": 20_000},
            ],
        }
        # Objects are passed to the router; a bool ``metrics`` is the config's flag.
        injected = {key: overrides.pop(key) for key in ("clock", "ledger", "metrics")
                    if overrides.get(key) is not None and not isinstance(overrides[key], bool)}
        config.update(overrides)
        router = Router(RouterConfig.from_dict(config), embedder=embedder, **injected)
        if history and router.history.count() == 0:
            router.history.upsert(topic_history(embedder))
        return router

    return build


def topic_history(embedder: HashingEmbedder, per_topic: int = 20) -> list[HistoryRecord]:
    """History where big is better on math, both are equal on code, and big costs 10x the tokens."""
    records = []
    for topic, (q_big, q_small) in QUALITY.items():
        prompts = [topic_prompt(topic, i) for i in range(per_topic)]
        for i, vector in enumerate(embedder.embed(prompts)):
            records.append(HistoryRecord(
                id=f"{topic}-{i}", embedding=vector, task=topic,
                outcomes={
                    "big-model": ModelOutcome(quality=q_big, prompt_tokens=100, completion_tokens=900),
                    "small-model": ModelOutcome(quality=q_small, prompt_tokens=100, completion_tokens=0),
                },
            ))
    return records
