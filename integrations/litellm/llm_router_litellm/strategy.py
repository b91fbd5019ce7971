"""The router as a ``litellm.Router`` routing strategy (Python SDK), and the logger that records outcomes.

``RoutingStrategy.install(router, settings)`` replaces the ``litellm.Router``'s deployment selection for the
routed model groups (see :mod:`llm_router_litellm.adapter`) and registers an :class:`OutcomeLogger`; other groups,
specific-deployment calls and non-chat calls (embeddings …) keep LiteLLM's own selection.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase

from llm_router_litellm.adapter import LiteLLMAdapter, warn_routing_overrides
from llm_router_plugin.embedding import Embedder

#: The ``routing_strategy`` of a ``litellm.Router`` that names none.
DEFAULT_ROUTING_STRATEGY = "simple-shuffle"


def _overridden(router: litellm.Router) -> list[str]:
    """What of a ``litellm.Router``'s own routing installing the strategy overrides for the routed groups (clauses
    for :func:`~llm_router_litellm.adapter.warn_routing_overrides`).

    The strategy picks a routed group's deployment among the healthy ones itself, without LiteLLM's pre-routing hook
    (where routing plugins run) or its routing strategy; other groups go to ``litellm.Router``'s own selection, not
    to a custom strategy set before.
    """
    overridden = []
    if "get_available_deployment" in router.__dict__:  # what set_custom_routing_strategy sets
        overridden.append("the custom routing strategy set before is replaced for every group (other groups get "
                          "LiteLLM's own routing_strategy)")
    if router.routing_strategy not in (None, DEFAULT_ROUTING_STRATEGY):
        overridden.append(f"routing_strategy {router.routing_strategy!r} is not used for {{it}} (it still applies to "
                          "other groups)")
    if router.routing_plugins:
        overridden.append("routing plugins (Router(plugins=...)) do not run for {it}")
    return overridden


class OutcomeLogger(CustomLogger):
    """Settles routed calls from LiteLLM's events: actual tokens, cost and latency on success; release on failure.

    LiteLLM calls the four event hooks with ``kwargs`` (the call's ``standard_logging_object`` and
    ``litellm_params``, whose metadata carries the decision), the response (unused), and the call's start and end.

    Args:
        adapter: the adapter whose routers made the decisions.
    """

    def __init__(self, adapter: LiteLLMAdapter | None = None) -> None:
        super().__init__()
        self._adapter = adapter
        self._lock = threading.Lock()

    @property
    def adapter(self) -> LiteLLMAdapter:
        """The adapter given, or the one :meth:`_connect` builds on first use."""
        if self._adapter is None:
            with self._lock:
                if self._adapter is None:
                    self._adapter = self._connect()
        return self._adapter

    def _connect(self) -> LiteLLMAdapter:
        """Build the adapter on first use (subclasses that know where to find their settings override this)."""
        raise RuntimeError("adapter: OutcomeLogger needs an adapter; pass OutcomeLogger(LiteLLMAdapter(...))")

    # LiteLLM calls these by keyword: the parameter names must stay exactly as in CustomLogger.
    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Record a successful synchronous call."""
        self.adapter.settle(kwargs, success=True)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Release the reservation of a failed synchronous call."""
        self.adapter.settle(kwargs, success=False)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Record a successful call (a stream reports once, at its end, with its real usage)."""
        await self.adapter.asettle(kwargs, success=True)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Release the reservation of a failed call."""
        await self.adapter.asettle(kwargs, success=False)


class RoutingStrategy(CustomRoutingStrategyBase):
    """A ``litellm.Router`` custom routing strategy that picks deployments with the budget-aware router.

    Prefer :meth:`install`, which also registers the outcome logger.

    Args:
        router: the LiteLLM router whose selection this replaces.
        adapter: the adapter over the router's model list.

    Attributes:
        router: the LiteLLM router.
        adapter: the adapter (``adapter.router(group).status()`` shows a group's budgets).
        logger: the :class:`OutcomeLogger` that :meth:`install` registers.
    """

    def __init__(self, router: litellm.Router, adapter: LiteLLMAdapter) -> None:
        self.router = router
        self.adapter = adapter
        self.logger = OutcomeLogger(adapter)

    @classmethod
    def install(
        cls, router: litellm.Router, settings: Mapping[str, Any] | None = None, *, embedder: Embedder | None = None
    ) -> RoutingStrategy:
        """Route a ``litellm.Router``'s routed model groups with the budget-aware router.

        Args:
            router: the LiteLLM router; deployments with a ``model_info.llm_router`` block make their group routed.
            settings: router settings (:class:`~llm_router_plugin.RouterConfig` fields except ``deployments``).
            embedder: overrides the embedder the settings name.

        Returns:
            The installed strategy; :meth:`uninstall` restores LiteLLM's own selection.

        Raises:
            ValueError: a setting or a routed deployment is invalid (the message names it).

        Also logs one warning naming what of the LiteLLM router's own routing (its ``routing_strategy``, routing
        plugins, a custom routing strategy set before) this overrides for the groups it routes.
        """
        adapter = LiteLLMAdapter(lambda: router.model_list, settings, embedder=embedder)
        routed = adapter.validate()  # a bad deployment block fails here, not on the group's first request
        warn_routing_overrides(routed, _overridden(router))
        strategy = cls(router, adapter)
        router.set_custom_routing_strategy(strategy)
        litellm.logging_callback_manager.add_litellm_callback(strategy.logger)
        return strategy

    def uninstall(self) -> None:
        """Restore the LiteLLM router's own selection and unregister the outcome logger."""
        # set_custom_routing_strategy shadows the Router's methods with instance attributes: dropping them restores.
        for name in ("get_available_deployment", "async_get_available_deployment"):
            self.router.__dict__.pop(name, None)
        litellm.logging_callback_manager.remove_callback_from_all_lists(self.logger)

    def _group(self, model: str, messages: Any, specific_deployment: bool | None) -> str | None:
        """The routed model group a request addresses, or ``None`` if LiteLLM should choose."""
        if specific_deployment or messages is None:
            return None
        group = self.router.get_model_from_alias(model) or model
        return group if self.adapter.router(group) is not None else None

    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,  # LiteLLM passes it by this name
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Choose a deployment for an async call (LiteLLM's health and cooldown filters first).

        Args:
            model: the requested model group (or alias, or deployment).
            messages: the chat messages; ``None`` keeps LiteLLM's own selection.
            input: the input of an embedding call.
            specific_deployment: the caller named one deployment: LiteLLM's own selection.
            request_kwargs: the request; the decision goes into its metadata.

        Returns:
            The deployment (a ``model_list`` entry).

        Raises:
            litellm.RateLimitError: the routed group's budgets are exhausted and it has no fallback deployment.
        """
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        group = self._group(model, messages, specific_deployment)
        if group is not None:
            healthy = await self.router.async_get_healthy_deployments(
                model=group, request_kwargs=request_kwargs, messages=messages, input=input,
            )
            if isinstance(healthy, list) and healthy:
                chosen = await self.adapter.achoose(group, healthy, messages, request_kwargs)
                if chosen is not None:
                    return chosen
        return await litellm.Router.async_get_available_deployment(
            self.router, model=model, request_kwargs=request_kwargs, messages=messages, input=input,
            specific_deployment=specific_deployment,
        )

    def get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,  # LiteLLM passes it by this name
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Choose a deployment for a sync call (LiteLLM's cooldown filter first).

        Args:
            model: the requested model group (or alias, or deployment).
            messages: the chat messages; ``None`` keeps LiteLLM's own selection.
            input: the input of an embedding call.
            specific_deployment: the caller named one deployment: LiteLLM's own selection.
            request_kwargs: the request; the decision goes into its metadata.

        Returns:
            The deployment (a ``model_list`` entry).

        Raises:
            litellm.RateLimitError: the routed group's budgets are exhausted and it has no fallback deployment.
        """
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        group = self._group(model, messages, specific_deployment)
        if group is not None:
            # LiteLLM's sync selection has no public healthy-deployments call; this is the helper its own sync
            # paths use (cooldown and blocked deployments removed).
            found = self.router._get_healthy_deployments(group, None)
            healthy = found[0] if found else []
            chosen = self.adapter.choose(group, healthy, messages, request_kwargs) if healthy else None
            if chosen is not None:
                return chosen
        return litellm.Router.get_available_deployment(
            self.router, model=model, messages=messages, input=input, specific_deployment=specific_deployment,
            request_kwargs=request_kwargs,
        )
