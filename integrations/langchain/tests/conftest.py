"""Fixtures: a router over two deployments with a small topic history, and a routing model over two fakes."""

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
from langchain_llm_router import RoutingChatModel
from lcr_support import fakes, history

from llm_router_plugin import Router, RouterConfig


@pytest.fixture
def make_router(tmp_path: Path) -> Callable[..., Router]:
    """Build a router over "big" and "small" (token budgets) with the topic history, on a fresh folder."""

    def build(**overrides: Any) -> Router:
        config: dict[str, Any] = {
            "data_dir": str(tmp_path / "router"),
            "embedding_model": "hashing-256",
            "warmup_queries": 50,
            "estimator": {"region_weight": 0},  # a tiny history: a pool of 50 would span every topic
            "deployments": [
                {"name": "big", "token_budget": 20_000},
                {"name": "small", "token_budget": 20_000},
            ],
        }
        config.update(overrides)
        router = Router(RouterConfig.from_dict(config))
        router.history.upsert(history(router))
        return router

    return build


@pytest.fixture
def router(make_router: Callable[..., Router]) -> Router:
    return make_router()


@pytest.fixture
def model(router: Router) -> RoutingChatModel:
    return RoutingChatModel(router=router, models=fakes())
