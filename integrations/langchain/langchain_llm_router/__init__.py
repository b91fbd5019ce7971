"""LangChain integration of llm-router-plugin: a chat model that routes each call under per-deployment budgets.

``RoutingChatModel`` is a ``BaseChatModel``, so LCEL chains, ``bind_tools``, ``with_structured_output``,
``with_fallbacks`` and agents accept it. A deterministic offline chat model for tests lives in
:mod:`langchain_llm_router.testing`.
"""

from langchain_llm_router.chat_model import RouteInfo, RoutingChatModel, route_info

__version__ = "0.1.0"

__all__ = ["RouteInfo", "RoutingChatModel", "__version__", "route_info"]
