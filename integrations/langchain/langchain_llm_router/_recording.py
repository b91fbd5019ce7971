"""Per-call callback handlers that settle a routing decision with what the chosen chat model did.

One handler is merged into the chosen child's config for each routed call. It learns from the child's own run
(its first chat-model run): usage from the final message's ``usage_metadata`` (for streams LangChain merges the
chunks, and the usage arrives on the last one), latency, time to first token, and errors. Each decision is
settled exactly once, whichever of the handler or the caller's wrapper gets there first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from llm_router_plugin import Decision, Router, estimate_tokens


class CallOutcome:
    """What one routed call did so far, and the ``Router.record`` arguments once it ends.

    Args:
        decision: the routing decision of the call.
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self._started = time.monotonic()
        self._first_token: float | None = None
        self._streamed: list[str] = []
        self._run_id: UUID | None = None
        self._settled = False
        self._lock = threading.Lock()

    def start(self, run_id: UUID) -> None:
        """Adopt the first chat-model run as the call's own (a child may start nested runs)."""
        with self._lock:
            if self._run_id is None:
                self._run_id = run_id

    def token(self, run_id: UUID, text: str) -> None:
        """Note streamed output: the first one fixes the time to first token."""
        if run_id == self._run_id:
            with self._lock:
                if self._first_token is None:
                    self._first_token = time.monotonic()
                self._streamed.append(text)

    def finished(self, run_id: UUID | None, message: BaseMessage | None) -> dict[str, Any] | None:
        """The record arguments of a call that returned ``message`` (``run_id=None``: from the caller's wrapper).

        A message without ``usage_metadata`` is charged the router's prompt count and an estimate of its text.

        Returns:
            ``None`` if the call is already settled or the run is not the call's own.
        """
        if not self._claim(run_id):
            return None
        usage = getattr(message, "usage_metadata", None)
        if usage:
            return self._args(usage["input_tokens"], usage["output_tokens"], None)
        text = message.text if message is not None else ""
        return self._args(self.decision.prompt_tokens, estimate_tokens(text) if text else 0, None)

    def failed(self, run_id: UUID | None, error: BaseException) -> dict[str, Any] | None:
        """The record arguments of a call that raised or was abandoned.

        Once output has streamed the provider has billed the prompt and that output, so the call is charged the
        prompt and an estimate of the streamed text; before any output the reservation is released.

        Returns:
            ``None`` if the call is already settled or the run is not the call's own.
        """
        if not self._claim(run_id):
            return None
        # GeneratorExit / CancelledError: the caller stopped consuming, which is not the deployment's fault.
        reason = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else "abandoned by the caller"
        streamed = "".join(self._streamed)
        if not streamed:
            return self._args(0, 0, reason)
        return self._args(self.decision.prompt_tokens, estimate_tokens(streamed), reason)

    def _claim(self, run_id: UUID | None) -> bool:
        with self._lock:
            if self._settled or (run_id is not None and run_id != self._run_id):
                return False
            self._settled = True
            return True

    def _args(self, prompt_tokens: int, completion_tokens: int, error: str | None) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "decision_id": self.decision.id,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_s": now - self._started,
            "ttft_s": None if self._first_token is None else self._first_token - self._started,
            "error": error,
        }


def _final_message(response: LLMResult) -> BaseMessage | None:
    generations = response.generations[0] if response.generations else []
    return getattr(generations[0], "message", None) if generations else None


def _token_text(token: Any) -> str:
    # Chat models stream str content or a list of content blocks.
    if isinstance(token, str):
        return token
    blocks = [b for b in token or [] if isinstance(b, str | dict)]
    return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in blocks)


def _event_text(event: Any) -> str | None:
    """The streamed text of a v3 protocol event, ``None`` if it streams no output."""
    if not isinstance(event, dict) or event.get("event") != "content-block-delta":
        return None
    delta = event.get("delta") or {}
    return str(delta.get("text") or delta.get("reasoning") or "")


class RecordingHandler(BaseCallbackHandler):
    """Settles a decision from the child's callbacks on the synchronous path.

    Args:
        router: the router that made the decision.
        decision: the decision to settle.
    """

    run_inline = True

    def __init__(self, router: Router, decision: Decision) -> None:
        self.router = router
        self.outcome = CallOutcome(decision)

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            **kwargs: Any) -> None:
        """Adopt the child's run."""
        self.outcome.start(run_id)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Note a streamed token."""
        self.outcome.token(run_id, _token_text(token))

    def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Note a streamed v3 protocol event that carries output."""
        text = _event_text(event)
        if text is not None:
            self.outcome.token(run_id, text)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the usage of the finished run."""
        self._record(self.outcome.finished(run_id, _final_message(response)))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the failed run (release, or charge what already streamed)."""
        self._record(self.outcome.failed(run_id, error))

    def settle_message(self, message: BaseMessage | None) -> None:
        """Settle from the call's result if the child's callbacks have not (a child that bypasses them)."""
        self._record(self.outcome.finished(None, message))

    @contextmanager
    def settling(self) -> Iterator[None]:
        """Settle the decision as failed if the block raises (even before the child's run starts)."""
        try:
            yield
        except BaseException as exc:
            self._record(self.outcome.failed(None, exc))
            raise

    def _record(self, args: dict[str, Any] | None) -> None:
        if args is not None:
            self.router.record(**args)


class AsyncRecordingHandler(AsyncCallbackHandler):
    """:class:`RecordingHandler` for the async path: the ledger and history writes run off the event loop.

    Args:
        router: the router that made the decision.
        decision: the decision to settle.
    """

    run_inline = True

    def __init__(self, router: Router, decision: Decision) -> None:
        self.router = router
        self.outcome = CallOutcome(decision)

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                                  run_id: UUID, **kwargs: Any) -> None:
        """Adopt the child's run."""
        self.outcome.start(run_id)

    async def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Note a streamed token."""
        self.outcome.token(run_id, _token_text(token))

    async def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Note a streamed v3 protocol event that carries output."""
        text = _event_text(event)
        if text is not None:
            self.outcome.token(run_id, text)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the usage of the finished run."""
        await self._record(self.outcome.finished(run_id, _final_message(response)))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the failed run (release, or charge what already streamed)."""
        await self._record(self.outcome.failed(run_id, error))

    async def settle_message(self, message: BaseMessage | None) -> None:
        """Settle from the call's result if the child's callbacks have not (a child that bypasses them)."""
        await self._record(self.outcome.finished(None, message))

    @asynccontextmanager
    async def settling(self) -> AsyncIterator[None]:
        """Settle the decision as failed if the block raises (even before the child's run starts)."""
        try:
            yield
        except BaseException as exc:
            await self._record(self.outcome.failed(None, exc))
            raise

    async def _record(self, args: dict[str, Any] | None) -> None:
        if args is not None:
            await self.router.arecord(**args)
