"""The router inside the LiteLLM proxy: a callback registered in config.yaml.

::

    litellm_settings:
      callbacks: ["llm_router_litellm.proxy.router_callback"]
    callback_settings:
      llm_router: {data_dir: /var/lib/llm-router, warmup_queries: 50}

The proxy has no hook for a custom routing strategy; its deployment filter hook runs after LiteLLM's own health,
cooldown and budget filters, and this callback narrows the healthy deployments of a routed group to the one the
router picks. The same object records outcomes from the success and failure events and adds ``x-llm-router-*``
headers to the response. The callback must be imported from this installed package (a copy of the module beside
config.yaml would be a second, separate instance).
"""

from __future__ import annotations

from typing import Any

import litellm

from llm_router_litellm.adapter import KEY, LiteLLMAdapter, decision_headers
from llm_router_litellm.strategy import OutcomeLogger


class ProxyCallback(OutcomeLogger):
    """Routes a proxy's routed model groups, records their outcomes and shows the decision in response headers.

    Args:
        adapter: the adapter to use; ``None`` builds one on the first request from the running proxy's
            ``model_list`` and ``callback_settings.llm_router``.
    """

    def _connect(self) -> LiteLLMAdapter:
        from litellm.proxy import proxy_server

        if proxy_server.llm_router is None:
            raise RuntimeError("adapter: no LiteLLM proxy router is running; pass ProxyCallback(adapter=...)")
        return LiteLLMAdapter(lambda: proxy_server.llm_router.model_list if proxy_server.llm_router else [],
                              (litellm.callback_settings or {}).get(KEY))

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        """Narrow a routed group's healthy deployments to the router's choice; other requests pass untouched.

        Args:
            model: the model group.
            healthy_deployments: what LiteLLM's health, cooldown and budget filters left.
            messages: the chat messages (``None`` for embeddings and other non-chat calls).
            request_kwargs: the request; the decision goes into its metadata.
            parent_otel_span: LiteLLM's tracing span (unused).

        Returns:
            The chosen deployment alone, or ``healthy_deployments`` unchanged.

        Raises:
            litellm.RateLimitError: the group's budgets are exhausted and it has no fallback deployment (HTTP 429).
        """
        if not healthy_deployments or messages is None:
            return healthy_deployments
        chosen = await self.adapter.achoose(model, healthy_deployments, messages,
                                            request_kwargs if request_kwargs is not None else {})
        return healthy_deployments if chosen is None else [chosen]

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """The decision of a routed request as response headers.

        Args:
            data: the request data (its metadata carries the decision).
            user_api_key_dict: the caller's key (unused).
            response: the response (unused).
            request_headers: the request's headers (unused).
            litellm_call_info: LiteLLM's routing details (unused).

        Returns:
            ``x-llm-router-decision-id``, ``-deployment``, ``-phase`` and ``-reason``; ``None`` for other requests.
        """
        return decision_headers(data) or None


#: The instance config.yaml names: ``callbacks: ["llm_router_litellm.proxy.router_callback"]``.
router_callback = ProxyCallback()
