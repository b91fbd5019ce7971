"""Fixtures: an offline environment, LiteLLM's global callbacks reset around every test, routed LiteLLM routers, and
the proxy callback's routes on a test app."""

from __future__ import annotations

import os

# Before litellm, chromadb, onnxruntime or the hub client are imported: stay offline and silent.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from llm_router_litellm import LiteLLMAdapter, ProxyCallback, RoutingStrategy
from llm_router_litellm.proxy import FEEDBACK_PATH
from router_litellm_support import key_check, model_list, seed_history, two_groups


@pytest.fixture(autouse=True)
def _reset_litellm_callbacks() -> Iterator[None]:
    """LiteLLM keeps callbacks in module globals: every test starts and ends without any."""
    litellm.logging_callback_manager._reset_all_callbacks()
    yield
    litellm.logging_callback_manager._reset_all_callbacks()


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, Any]:
    """Router settings on a fresh folder, with the fast hashing embedder."""
    return {"data_dir": str(tmp_path / "router"), "embedding_model": "hashing-256", "warmup_queries": 5,
            "estimator": {"region_weight": 0}}  # a tiny history: a pool of 50 would span every topic


@pytest.fixture
def make_strategy(settings: dict[str, Any]) -> Callable[..., RoutingStrategy]:
    """A ``litellm.Router`` over :func:`model_list` with the strategy installed and the topic history seeded."""

    def build(deployments: list[dict[str, Any]] | None = None, **router_kwargs: Any) -> RoutingStrategy:
        router = litellm.Router(model_list=deployments or model_list(), **{"num_retries": 0, **router_kwargs})
        strategy = RoutingStrategy.install(router, settings)
        seed_history(strategy.adapter)
        return strategy

    return build


@pytest.fixture
def make_adapter(settings: dict[str, Any]) -> Callable[..., LiteLLMAdapter]:
    """An adapter over a fixed model list, with the topic history seeded."""

    def build(deployments: list[dict[str, Any]] | None = None) -> LiteLLMAdapter:
        fixed = deployments or model_list()
        adapter = LiteLLMAdapter(lambda: fixed, settings)
        seed_history(adapter)
        return adapter

    return build


@pytest.fixture
def client(make_adapter: Callable[..., LiteLLMAdapter]) -> Iterator[tuple[TestClient, LiteLLMAdapter]]:
    """The proxy callback's routes on an app of their own, over :func:`two_groups`, with the key check overridden.

    The routes' authentication is LiteLLM's ``user_api_key_auth``; a real proxy checks it in the integration tests.
    Here it is overridden, so that every answer to a bad request can be checked without starting a proxy.
    """
    adapter = make_adapter(two_groups())
    app = FastAPI()
    ProxyCallback(adapter).add_routes(app)
    app.dependency_overrides[key_check(app, FEEDBACK_PATH)] = lambda: None
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client, adapter


def pytest_configure(config: pytest.Config) -> None:
    # Importing LiteLLM makes pydantic warn about LiteLLM's own TypedDicts; nothing a test here can act on.
    config.addinivalue_line("filterwarnings", "ignore:.*using the `ReadOnly` qualifier:UserWarning")
