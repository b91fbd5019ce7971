"""Shared test data: topic prompts, their history, fake children, a run spy and a budget lookup."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_llm_router import RoutingChatModel
from langchain_llm_router.testing import WordCountChatModel

from llm_router_plugin import DeploymentStatus, HistoryRecord, ModelOutcome, Router

#: Topic prompts: "big" is far better at math; on chat both are good and "small" costs a tenth of the tokens.
MATH = "solve the equation integral derivative algebra"
CHAT = "hello tell me a story about the weather"
_QUALITY = {MATH: {"big": 1.0, "small": 0.0}, CHAT: {"big": 0.8, "small": 0.75}}
_COMPLETION = {"big": 200, "small": 20}


def history(router: Router, per_topic: int = 10) -> list[HistoryRecord]:
    """Past outcomes of both deployments on variants of the two topic prompts."""
    records = []
    for topic, quality in _QUALITY.items():
        vectors = router.embedder.embed([f"{topic} variant {i}" for i in range(per_topic)])
        for i, vector in enumerate(vectors):
            records.append(HistoryRecord(
                id=f"{topic.split()[0]}-{i}", embedding=vector,
                outcomes={name: ModelOutcome(quality=q, prompt_tokens=20, completion_tokens=_COMPLETION[name])
                          for name, q in quality.items()},
            ))
    return records


def fakes() -> dict[str, BaseChatModel]:
    """One fake chat model per deployment; each answer names the model that wrote it."""
    return {"big": WordCountChatModel(model_name="big"), "small": WordCountChatModel(model_name="small")}


def deployment(router: Router, name: str) -> DeploymentStatus:
    """The budget state of one deployment."""
    return next(d for d in router.status().deployments if d.name == name)


class RunSpy(BaseCallbackHandler):
    """Keeps the tags and metadata of every chat-model run it is called for."""

    def __init__(self) -> None:
        self.runs: list[tuple[list[str], dict[str, Any]]] = []

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        self.runs.append((tags or [], metadata or {}))

    @property
    def decision_ids(self) -> list[str]:
        """The routing decision of each run, from its run metadata."""
        return [metadata["llm_router_decision_id"] for _, metadata in self.runs]


def join_chunks(chunks: Iterable[BaseMessage]) -> AIMessageChunk:
    """The message a stream of chunks adds up to."""
    first, *rest = [cast(AIMessageChunk, chunk) for chunk in chunks]
    return add_ai_message_chunks(first, *rest)


class StandardSuiteParams:
    """What LangChain's standard chat-model suites need to build a routing model over the two fakes.

    The suites build the model themselves, from ``chat_model_params``; the router comes from the ``router`` fixture
    (a fresh folder per test), kept by an autouse fixture because a property cannot request fixtures.
    """

    _router: Router

    @pytest.fixture(autouse=True)
    def _keep_router(self, router: Router) -> None:
        self._router = router

    @property
    def chat_model_class(self) -> type[RoutingChatModel]:
        return RoutingChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"router": self._router, "models": fakes()}
