"""LangChain's standard integration tests for chat models (``langchain-tests``), on a routing model over two fakes.

The suite's feature flags say what the routing model supports over ``WordCountChatModel`` children: tool calling
(with ``tool_choice``), structured output and usage metadata, in text only. What the fakes lack (JSON mode, images,
PDFs, audio, Anthropic-style content) is skipped by the suite itself; with children that have those features the
routing model passes the content through unchanged.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from lcr_support import StandardSuiteParams

pytestmark = pytest.mark.integration


class TestRoutingChatModelStandardIntegration(StandardSuiteParams, ChatModelIntegrationTests):
    """The routing model over two ``WordCountChatModel`` children."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # The router picks the model per call: a `model` call argument reaches the chosen child untouched, so the
        # answer would come from a model the router neither chose nor budgets for. Not a feature to advertise.
        return False
