"""``RoutingChatModel``: a LangChain chat model that routes every call to one of several chat models.

Each call is routed by the core router, then handed whole to the chosen child chat model with the caller's config
(plus a recording callback and the decision as run metadata). The public entry points are overridden rather than
``_generate``/``_stream``: wrapping the child inside this model's own run would report its usage twice and stream
its tokens twice to callback handlers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing
from typing import Any, Literal, Self, TypedDict, TypeVar, cast, overload

from langchain_core.callbacks import BaseCallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_model_stream import AsyncChatModelStream, ChatModelStream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.config import merge_configs
from langchain_core.runnables.schema import StreamEvent
from langchain_core.tools import BaseTool
from pydantic import BaseModel, model_validator

from langchain_llm_router._recording import AsyncRecordingHandler, RecordingHandler
from llm_router_plugin import Decision, Router

#: Key of the routing decision in ``AIMessage.response_metadata``.
METADATA_KEY = "llm_router"
T = TypeVar("T")


class RouteInfo(TypedDict):
    """The routing decision behind a message (``response_metadata["llm_router"]``).

    Attributes:
        decision_id: pass it to :meth:`RoutingChatModel.feedback`.
        deployment: the deployment (key of ``models``) that answered.
        model: its model profile in the router's history.
        phase: ``"warmup"``, ``"learned"``, ``"explore"`` or ``"fallback"``.
        reason: why the router chose it.
    """

    decision_id: str
    deployment: str
    model: str
    phase: str
    reason: str


def route_info(message: BaseMessage) -> RouteInfo | None:
    """The routing decision behind a message from :class:`RoutingChatModel`.

    Args:
        message: a message (or the first chunk of a stream) the routing model returned.

    Returns:
        The decision, or ``None`` for a message the routing model did not produce.
    """
    info = message.response_metadata.get(METADATA_KEY)
    return cast(RouteInfo, info) if isinstance(info, dict) else None


def _annotate(message: T, decision: Decision) -> T:
    cast(BaseMessage, message).response_metadata[METADATA_KEY] = dict(RouteInfo(
        decision_id=decision.id, deployment=decision.deployment, model=decision.model, phase=decision.phase,
        reason=decision.reason,
    ))
    return message


def _run_metadata(decision: Decision) -> dict[str, str]:
    return {"llm_router_decision_id": decision.id, "llm_router_deployment": decision.deployment,
            "llm_router_phase": decision.phase}


class RoutingChatModel(BaseChatModel):
    """A chat model that sends each call to the deployment the router picks for it.

    ``invoke``/``ainvoke``/``batch``/``abatch``/``stream``/``astream`` and ``stream_events``/``astream_events``
    (v2 and v3) route every input separately, call the chosen child with the caller's config, and settle the
    router's reservation with the child's reported usage (or release it on error; a stream that fails or is
    abandoned after output began is charged the prompt and the output so far). The decision is in the answer's
    ``response_metadata["llm_router"]`` (see :func:`route_info`; on the first chunk of a stream) and, for tracing,
    in the run metadata (``llm_router_decision_id``, ``llm_router_deployment``, ``llm_router_phase``).

    A call raises the core's ``BudgetExhaustedError`` when no deployment can afford it and none is a fallback.

    Attributes:
        router: the core router; its config names the deployments and budgets.
        models: deployment name → the chat model that serves it. Only these deployments are routed to.

    Example:
        >>> model = RoutingChatModel(  # doctest: +SKIP
        ...     router=Router.from_config("router.yaml"),
        ...     models={"gpt-4o": ChatOpenAI(model="gpt-4o"), "haiku": ChatAnthropic(model="claude-3-5-haiku-latest")},
        ... )
        >>> chain = prompt | model | StrOutputParser()  # doctest: +SKIP
    """

    router: Router
    models: Mapping[str, BaseChatModel]

    @model_validator(mode="after")
    def _check_models(self) -> Self:
        known = [d.name for d in self.router.config.deployments]
        if not self.models:
            raise ValueError(f"models: map at least one deployment name to a chat model (deployments: {known})")
        unknown = sorted(set(self.models) - set(known))
        if unknown:
            raise ValueError(f"models: {unknown} are not deployments of the router (deployments: {known})")
        return self

    @property
    def _llm_type(self) -> str:
        return "llm-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"deployments": list(self.models)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Tracing parameters: the router as provider and, as the model, the deployments any call may go to.

        Args:
            stop: stop sequences of the call.
            **kwargs: call arguments; a ``model`` one names the model (the chosen child is asked for it).

        Returns:
            LangChain's standard tracing parameters (``ls_provider``, ``ls_model_name``, ``ls_model_type``, and
            ``ls_temperature``/``ls_max_tokens``/``ls_stop`` when the call sets them).
        """
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self._llm_type
        params.setdefault("ls_model_name", "|".join(self.models))
        return params

    # ------------------------------------------------------------------------------------------- bindings

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools to whichever child each call is routed to.

        The tools are bound as call arguments (``tools``, ``tool_choice`` and ``kwargs``), as on any chat model, so
        agent frameworks see them; each call hands them to the chosen child's ``bind_tools``.

        Args:
            tools: passed to the chosen child's ``bind_tools`` at call time.
            tool_choice: passed on when given.
            **kwargs: passed on to the child's ``bind_tools``.

        Returns:
            This model with the tools bound.

        Raises:
            ValueError: a child does not implement ``bind_tools``.
        """
        self._require("bind_tools")
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=list(tools), **kwargs)

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output from whichever child each call is routed to.

        The child is always asked for the raw message too, so its usage is recorded and the decision attached.

        Args:
            schema: passed to the chosen child's ``with_structured_output``.
            include_raw: return ``{"raw", "parsed", "parsing_error"}`` instead of the parsed output.
            **kwargs: passed on (e.g. ``method``).

        Returns:
            A runnable that routes each input and returns the parsed output.

        Raises:
            ValueError: a child supports neither ``with_structured_output`` nor ``bind_tools``.
        """
        self._require("with_structured_output", "bind_tools")
        return _StructuredOutput(self, schema, include_raw, kwargs)

    def _require(self, *methods: str) -> None:
        """Fail now, not at call time, if a child implements none of ``methods``."""
        lacking = [name for name, model in self.models.items()
                   if all(getattr(type(model), m) is getattr(BaseChatModel, m) for m in methods)]
        if lacking:
            raise ValueError(f"models: {lacking} do not implement {' or '.join(methods)}")

    # ------------------------------------------------------------------------------------------- feedback

    def feedback(self, decision_id: str, quality: float) -> None:
        """Report how good a routed answer was (e.g. a thumbs-up as 1.0), so the router learns from it.

        Args:
            decision_id: ``route_info(message)["decision_id"]``.
            quality: score in [0, 1].

        Raises:
            UnknownDecisionError: no such decision.
            ValueError: quality outside [0, 1], or the call failed (a score given before the call finishes is kept
                and learned when it does).
        """
        self.router.feedback(decision_id, quality)

    async def afeedback(self, decision_id: str, quality: float) -> None:
        """Async :meth:`feedback`."""
        await self.router.afeedback(decision_id, quality)

    # ------------------------------------------------------------------------------------------- calls

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Route the input and return the chosen child's answer.

        Args:
            input: a prompt, messages or a prompt value.
            config: the caller's runnable config; the child runs with it.
            stop: stop sequences for the child.
            **kwargs: call arguments for the child.

        Returns:
            The child's answer, with the decision in ``response_metadata["llm_router"]``.

        Raises:
            BudgetExhaustedError: no deployment can afford the input and none is a fallback.
        """

        def call(decision: Decision, child_config: RunnableConfig) -> BaseMessage:
            child, child_kwargs = self._child(decision, kwargs)
            return child.invoke(input, child_config, stop=stop, **child_kwargs)

        decision, message = self._run(input, config, call, _itself)
        return cast(AIMessage, _annotate(message, decision))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Async :meth:`invoke`."""

        async def call(decision: Decision, child_config: RunnableConfig) -> BaseMessage:
            child, child_kwargs = self._child(decision, kwargs)
            return await child.ainvoke(input, child_config, stop=stop, **child_kwargs)

        decision, message = await self._arun(input, config, call, _itself)
        return cast(AIMessage, _annotate(message, decision))

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Route the input and stream the chosen child's chunks.

        Args:
            input: a prompt, messages or a prompt value.
            config: the caller's runnable config; the child runs with it.
            stop: stop sequences for the child.
            **kwargs: call arguments for the child.

        Yields:
            The child's chunks; the first carries the decision in ``response_metadata["llm_router"]``.

        Raises:
            BudgetExhaustedError: no deployment can afford the input and none is a fallback.
        """
        decision = self._route(input)
        handler = RecordingHandler(self.router, decision)
        last: AIMessageChunk | None = None
        with handler.settling():
            child, child_kwargs = self._child(decision, kwargs)
            chunks = child.stream(input, self._child_config(config, decision, handler), stop=stop, **child_kwargs)
            # Closing the child on early exit lets its run end (and this call settle) now, not at garbage collection.
            with closing(cast(Generator[AIMessageChunk, None, None], chunks)) as child_chunks:
                for chunk in child_chunks:
                    yield _annotate(chunk, decision) if last is None else chunk
                    last = chunk
        handler.settle_message(last)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`; a stream abandoned early still settles its reservation when it is closed."""
        decision = await self._aroute(input)
        handler = AsyncRecordingHandler(self.router, decision)
        last: AIMessageChunk | None = None
        async with handler.settling():
            child, child_kwargs = self._child(decision, kwargs)
            chunks = child.astream(input, self._child_config(config, decision, handler), stop=stop, **child_kwargs)
            async with aclosing(cast(AsyncGenerator[AIMessageChunk, None], chunks)) as child_chunks:
                async for chunk in child_chunks:
                    yield _annotate(chunk, decision) if last is None else chunk
                    last = chunk
        await handler.settle_message(last)

    @overload  # type: ignore[override]
    def stream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
        version: Literal["v1", "v2"] = "v2", **kwargs: Any,
    ) -> Iterator[StreamEvent]: ...

    @overload
    def stream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, version: Literal["v3"],
        stop: list[str] | None = None, **kwargs: Any,
    ) -> ChatModelStream: ...

    def stream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
        version: Literal["v1", "v2", "v3"] = "v2", stop: list[str] | None = None, **kwargs: Any,
    ) -> Iterator[StreamEvent] | ChatModelStream:
        """For ``version="v3"``: route the input and return the chosen child's event stream.

        The v3 stream bypasses ``stream``, so it is routed here; the decision is in the run metadata (the
        assembled ``output`` message is built by LangChain, without it). Other versions behave as on any model.
        """
        if version != "v3":
            return super().stream_events(input, config, version=version, stop=stop, **kwargs)
        decision = self._route(input)
        handler = RecordingHandler(self.router, decision)
        with handler.settling():
            child, child_kwargs = self._child(decision, kwargs)
            return child.stream_events(
                input, self._child_config(config, decision, handler), version="v3", stop=stop, **child_kwargs
            )

    @overload
    def astream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
        version: Literal["v1", "v2"] = "v2", **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]: ...

    @overload
    def astream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, version: Literal["v3"],
        stop: list[str] | None = None, **kwargs: Any,
    ) -> Awaitable[AsyncChatModelStream]: ...

    def astream_events(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
        version: Literal["v1", "v2", "v3"] = "v2", stop: list[str] | None = None, **kwargs: Any,
    ) -> AsyncIterator[StreamEvent] | Awaitable[AsyncChatModelStream]:
        """Async :meth:`stream_events`: v1/v2 events come from :meth:`astream`; v3 is routed here."""
        if version != "v3":
            return super().astream_events(input, config, version=version, stop=stop, **kwargs)
        return self._astream_events_v3(input, config, stop=stop, **kwargs)

    async def _astream_events_v3(
        self, input: LanguageModelInput, config: RunnableConfig | None, stop: list[str] | None, **kwargs: Any
    ) -> AsyncChatModelStream:
        decision = await self._aroute(input)
        handler = AsyncRecordingHandler(self.router, decision)
        async with handler.settling():
            child, child_kwargs = self._child(decision, kwargs)
            return await child.astream_events(
                input, self._child_config(config, decision, handler), version="v3", stop=stop, **child_kwargs
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Reached only through the legacy generate()/agenerate() API, which would wrap the child in a second run.
        raise NotImplementedError(
            "RoutingChatModel routes in invoke/ainvoke/stream/astream (which batch, abatch and the event streams "
            "use); generate() and agenerate() are not supported"
        )

    # ------------------------------------------------------------------------------------------- plumbing

    def _query(self, input: LanguageModelInput) -> list[dict[str, Any]]:
        return convert_to_openai_messages(self._convert_input(input).to_messages())

    def _route(self, input: LanguageModelInput) -> Decision:
        return self.router.route(self._query(input), deployments=list(self.models))

    async def _aroute(self, input: LanguageModelInput) -> Decision:
        return await self.router.aroute(self._query(input), deployments=list(self.models))

    def _child(
        self, decision: Decision, kwargs: dict[str, Any]
    ) -> tuple[Runnable[LanguageModelInput, BaseMessage], dict[str, Any]]:
        """The chosen child and the call arguments to give it.

        Tools (bound with :meth:`bind_tools` or passed per call) arrive as the ``tools`` call argument. They and the
        other arguments go through the child's own ``bind_tools``, which converts them to its provider's format.
        """
        model = self.models[decision.deployment]
        if "tools" not in kwargs:
            return model, kwargs
        options = dict(kwargs)
        return model.bind_tools(options.pop("tools"), **options), {}

    def _child_config(
        self, config: RunnableConfig | None, decision: Decision, handler: RecordingHandler | AsyncRecordingHandler
    ) -> RunnableConfig:
        """The caller's config (or the one inherited from the enclosing runnable) plus this model's own callbacks,
        tags and metadata, the decision's run metadata and the recording handler."""
        own = self.callbacks.handlers if isinstance(self.callbacks, BaseCallbackManager) else list(self.callbacks or [])
        return merge_configs(ensure_config(config), RunnableConfig(
            callbacks=[*own, handler],
            tags=list(self.tags or []),
            metadata={**(self.metadata or {}), **_run_metadata(decision)},
        ))

    def _run(
        self, input: LanguageModelInput, config: RunnableConfig | None,
        call: Callable[[Decision, RunnableConfig], T], message: Callable[[T], BaseMessage],
    ) -> tuple[Decision, T]:
        """Route, call the child, and settle the decision (``message`` picks the answer out of the output)."""
        decision = self._route(input)
        handler = RecordingHandler(self.router, decision)
        with handler.settling():
            output = call(decision, self._child_config(config, decision, handler))
        handler.settle_message(message(output))
        return decision, output

    async def _arun(
        self, input: LanguageModelInput, config: RunnableConfig | None,
        call: Callable[[Decision, RunnableConfig], Awaitable[T]], message: Callable[[T], BaseMessage],
    ) -> tuple[Decision, T]:
        """Async :meth:`_run`."""
        decision = await self._aroute(input)
        handler = AsyncRecordingHandler(self.router, decision)
        async with handler.settling():
            output = await call(decision, self._child_config(config, decision, handler))
        await handler.settle_message(message(output))
        return decision, output


def _itself(message: BaseMessage) -> BaseMessage:
    return message


def _raw(output: dict[str, Any]) -> BaseMessage:
    return cast(BaseMessage, output["raw"])


class _StructuredOutput(Runnable[LanguageModelInput, dict[str, Any] | BaseModel]):
    """``RoutingChatModel.with_structured_output``: route each input, then ask the chosen child for the schema."""

    def __init__(self, model: RoutingChatModel, schema: dict[str, Any] | type, include_raw: bool,
                 kwargs: dict[str, Any]) -> None:
        self._model = model
        self._schema = schema
        self._include_raw = include_raw
        self._kwargs = kwargs

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Route the input and return the chosen child's structured output."""
        decision, output = self._model._run(
            input, config, lambda d, c: self._child(d).invoke(input, c, **kwargs), _raw
        )
        return self._unpack(output, decision)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke`."""

        async def call(decision: Decision, child_config: RunnableConfig) -> dict[str, Any]:
            return await self._child(decision).ainvoke(input, child_config, **kwargs)

        decision, output = await self._model._arun(input, config, call, _raw)
        return self._unpack(output, decision)

    def _child(self, decision: Decision) -> Runnable[LanguageModelInput, dict[str, Any]]:
        child = self._model.models[decision.deployment]
        return cast(Runnable[LanguageModelInput, dict[str, Any]],
                    child.with_structured_output(self._schema, include_raw=True, **self._kwargs))

    def _unpack(self, output: dict[str, Any], decision: Decision) -> Any:
        _annotate(output["raw"], decision)
        if self._include_raw:
            return output
        if output.get("parsing_error") is not None:
            raise output["parsing_error"]
        return output["parsed"]
