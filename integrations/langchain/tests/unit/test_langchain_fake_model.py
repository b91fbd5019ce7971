"""The word-count fake behaves like a provider integration: usage, streaming usage on the last chunk, tools."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_llm_router.testing import WordCountChatModel
from lcr_support import join_chunks
from pydantic import BaseModel


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Verdict(BaseModel):
    """A yes/no verdict with a count."""

    answer: str
    votes: int


def test_invoke_answers_from_the_template_with_word_count_usage() -> None:
    message = WordCountChatModel(model_name="m", reply="{model} says {input}").invoke("two words")

    assert message.content == "m says two words"
    assert message.usage_metadata == {"input_tokens": 2, "output_tokens": 4, "total_tokens": 6}


def test_stream_puts_usage_on_the_last_chunk_only() -> None:
    fake = WordCountChatModel(model_name="m")
    chunks = list(fake.stream("count these three"))

    assert len(chunks) > 2
    assert all(c.usage_metadata is None for c in chunks[:-1])
    total = join_chunks(chunks)
    assert total.content == fake.invoke("count these three").content
    assert total.usage_metadata == fake.invoke("count these three").usage_metadata


def test_bound_tool_is_called_with_the_request_text_then_the_result_is_answered() -> None:
    fake = WordCountChatModel(model_name="m").bind_tools([get_weather])

    call = fake.invoke("Paris")
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert call.usage_metadata is not None and call.usage_metadata["output_tokens"] > 0

    answer = fake.invoke([HumanMessage("Paris"), call, ToolMessage("sunny", tool_call_id=call.tool_calls[0]["id"])])
    assert answer.tool_calls == []
    assert answer.content == "m answers: sunny"


def test_streamed_tool_call_matches_the_invoked_one() -> None:
    fake = WordCountChatModel(model_name="m").bind_tools([get_weather])
    chunks = list(fake.stream("Rome"))
    total = join_chunks(chunks)

    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Rome"})]


def test_tool_choice_none_answers_in_text_and_an_unknown_tool_is_an_error() -> None:
    fake = WordCountChatModel(model_name="m")

    assert fake.bind_tools([get_weather], tool_choice="none").invoke("Paris").tool_calls == []
    with pytest.raises(ValueError, match="tool_choice"):
        fake.bind_tools([get_weather], tool_choice="get_time").invoke("Paris")


def test_structured_output_fills_required_fields_by_type_or_from_tool_args() -> None:
    assert WordCountChatModel().with_structured_output(Verdict).invoke("yes") == Verdict(answer="yes", votes=1)
    fixed = WordCountChatModel(tool_args={"answer": "no", "votes": 3})
    assert fixed.with_structured_output(Verdict).invoke("yes") == Verdict(answer="no", votes=3)


def test_numeric_tool_arguments_are_the_numbers_of_the_request_in_order() -> None:
    @tool
    def add(a: int, b: float, c: int) -> float:
        """Add three numbers."""
        return a + b + c

    call = WordCountChatModel().bind_tools([add]).invoke("What is 3 plus 2.5?")

    assert call.tool_calls[0]["args"] == {"a": 3, "b": 2.5, "c": 1}
