"""LangChain's standard unit tests for chat models (``langchain-tests``), run on a routing model over two fakes."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests
from lcr_support import StandardSuiteParams


class TestRoutingChatModelStandardUnit(StandardSuiteParams, ChatModelUnitTests):
    """The routing model over two ``WordCountChatModel`` children: tool calling and structured output."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True
