"""A deterministic offline chat model for testing chains that use :class:`~langchain_llm_router.RoutingChatModel`.

The fakes in ``langchain_core`` either drop usage when streaming or cannot bind tools; this one does both the way
provider integrations do: usage (word counts) on the final message, and on the last chunk only when streaming.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

_WORD = re.compile(r"\S+\s*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Tool choices that let the model pick the tool (rather than name one).
_ANY_TOOL = {None, "auto", "any", "required", True}


def count_words(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(text.split())


class WordCountChatModel(BaseChatModel):
    """A chat model that answers from a template and counts usage in words.

    Without tools it replies ``reply.format(model=model_name, input=<text of the last message>)``. With tools bound
    (``bind_tools``) and the last message not a tool result, it calls one tool instead: the one ``tool_choice``
    names, else the first; its arguments are ``tool_args``, else one value per required parameter (strings get
    the last message's text; integers and numbers the numbers in it, in order, then 1; booleans true; lists and
    objects empty). Structured output works through tool calling (LangChain's default ``with_structured_output``).

    Usage: input tokens are the words of all input messages, output tokens the words of the reply (or of the tool
    calls' JSON arguments). ``stream`` yields one chunk per word; the last chunk carries the usage, the tool calls
    and the finish reason.

    Attributes:
        model_name: reported as ``response_metadata["model_name"]`` and available to ``reply``.
        reply: the answer template (``{model}`` and ``{input}`` are filled in).
        tool_args: arguments for every tool call, instead of generated ones.
    """

    model_name: str = "word-count"
    reply: str = "{model} answers: {input}"
    tool_args: dict[str, Any] | None = None

    @property
    def _llm_type(self) -> str:
        return "word-count-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (converted to OpenAI tool schemas) as the ``tools`` call argument.

        Args:
            tools: tools, functions, pydantic models or tool schemas.
            tool_choice: a tool name to always call it; ``"none"`` never calls a tool; anything else lets the
                model pick (the first tool).
            **kwargs: further call arguments to bind.

        Returns:
            This model with the tools bound.
        """
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._respond(messages, **kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._respond(messages, **kwargs)
        words = _WORD.findall(message.text) or [""]
        for word in words[:-1]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=word, id=message.id))
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=words[-1], id=message.id, usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata, chunk_position="last",
            tool_call_chunks=[
                {"type": "tool_call_chunk", "name": call["name"], "args": json.dumps(call["args"]),
                 "id": call["id"], "index": i}
                for i, call in enumerate(message.tool_calls)
            ],
        ))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop, **kwargs):
            await asyncio.sleep(0)  # a real stream yields to the loop between chunks
            yield chunk

    def _respond(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        last = messages[-1].text if messages else ""
        tool = self._tool_to_call(messages, kwargs.get("tools") or [], kwargs.get("tool_choice"))
        if tool is None:
            content = self.reply.format(model=self.model_name, input=last)
            calls: list[ToolCall] = []
            output_tokens = count_words(content)
        else:
            content = ""
            args = self.tool_args if self.tool_args is not None else _example_args(tool["parameters"], last)
            calls = [ToolCall(name=tool["name"], args=args, id=f"call_{len(messages)}", type="tool_call")]
            output_tokens = count_words(json.dumps(args))
        input_tokens = sum(count_words(m.text) for m in messages)
        return AIMessage(
            content=content,
            tool_calls=calls,
            usage_metadata=UsageMetadata(
                input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
            ),
            response_metadata={"model_name": self.model_name, "finish_reason": "tool_calls" if calls else "stop"},
        )

    @staticmethod
    def _tool_to_call(messages: list[BaseMessage], tools: list[dict[str, Any]], choice: Any) -> dict[str, Any] | None:
        # After a tool result the model answers in text, as an agent loop expects.
        if not tools or choice == "none" or (messages and messages[-1].type == "tool"):
            return None
        functions = [tool["function"] for tool in tools]
        if choice in _ANY_TOOL:
            return functions[0]
        name = choice["function"]["name"] if isinstance(choice, dict) else choice
        for function in functions:
            if function["name"] == name:
                return function
        raise ValueError(f"tool_choice: no bound tool is called {name!r}")


def _example_args(parameters: dict[str, Any], text: str) -> dict[str, Any]:
    """One value of the right JSON type for every required parameter; numeric ones take the text's numbers."""
    properties = parameters.get("properties", {})
    by_type: dict[str, Any] = {"string": text, "boolean": True, "array": [], "object": {}, "null": None}
    numbers = iter(_NUMBER.findall(text))
    args = {}
    for name in parameters.get("required", []):
        schema = properties.get(name, {})
        kind = schema.get("type", "string")
        if schema.get("enum"):
            args[name] = schema["enum"][0]
        elif kind in ("integer", "number"):
            # As a model reads "magic_function(3)": the request's numbers fill the numeric parameters in order.
            number = float(next(numbers, "1"))
            args[name] = int(number) if kind == "integer" else number
        else:
            args[name] = by_type.get(kind, text)
    return args
