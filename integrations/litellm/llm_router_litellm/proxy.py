"""The router inside the LiteLLM proxy: a callback registered in config.yaml.

::

    litellm_settings:
      callbacks: ["llm_router_litellm.proxy.router_callback"]
    callback_settings:
      llm_router: {data_dir: /var/lib/llm-router, warmup_queries: 50}

The proxy has no hook for a custom routing strategy; its deployment filter hook runs after LiteLLM's own health
and cooldown filters, and this callback narrows the healthy deployments of a routed group to the one the router
picks. LiteLLM's budget limiter (deployment ``max_budget``, ``provider_budget_config``, tag budgets) is a filter hook
too, registered when the proxy builds its router, after the config's callbacks, so it runs after this one. For a
routed group this callback runs it first and the router picks among the deployments within their LiteLLM budget: one
over it is routed around rather than picked and then refused (with none within, the limiter's own error fails the
request). The same object strips any
``llm_router`` metadata a client sends (pre-call hook), records outcomes from the success and failure events,
releases every attempt of a request the proxy gave up on (post-call failure hook), and adds ``x-llm-router-*``
headers to the response. The callback must be imported from this installed
package (a copy of the module beside config.yaml would be a second, separate instance).

It also adds three routes to the proxy, behind its own key check: ``POST /llm-router/feedback`` with
``{"decision_id": ..., "quality": 0.8}``, so that an application can score the answer a decision id came with,
``GET /llm-router/status``, every routed group's router status (budgets, spend, dual weights, decisions, phase), and
``GET /llm-router/metrics``, the routers' Prometheus metrics alone (see :mod:`llm_router_plugin.metrics`). The routers
report to prometheus_client's default registry, so with LiteLLM's own ``"prometheus"`` callback they are on the
proxy's ``/metrics`` as well; this route serves them without it.

When the proxy imports this module it has already read its config file: the router settings and every routed
deployment are validated then, so that a bad ``model_info.llm_router`` block, a negative budget, a duplicate
``model_info.id`` or a USD budget without a price stops the proxy at start with the message, instead of failing
every request of the group later.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import litellm
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from litellm.router_strategy.budget_limiter import RouterBudgetLimiting
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from llm_router_litellm.adapter import (
    KEY,
    LiteLLMAdapter,
    decision_headers,
    proxy_routing_overrides,
    strip_client_metadata,
    warn_routing_overrides,
)
from llm_router_litellm.strategy import OutcomeLogger
from llm_router_plugin._files import read_yaml
from llm_router_plugin.errors import LedgerUnavailableError, UnknownDecisionError
from llm_router_plugin.metrics import exposition
from llm_router_plugin.validation import score

#: The proxy route that takes quality feedback.
FEEDBACK_PATH = "/llm-router/feedback"
#: The proxy route that shows every routed group's router status.
STATUS_PATH = "/llm-router/status"
#: The proxy route that serves the routers' Prometheus metrics.
METRICS_PATH = "/llm-router/metrics"
#: Longest decision id the route looks up (the router's ids are 32 hex digits).
MAX_DECISION_ID = 128
_log = logging.getLogger("llm_router_litellm")


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

    def validate_proxy_config(self, path: str) -> None:
        """Validate the router settings and routed deployments of a proxy config file, and keep that adapter.

        Args:
            path: the proxy's config.yaml.

        Also logs one warning naming what of LiteLLM's own routing (``router_settings.routing_strategy``,
        ``plugins``) the router overrides for the groups it routes.

        Raises:
            ValueError: a setting or a routed deployment is invalid (the message names it).
        """
        from litellm.proxy import proxy_server

        adapter = LiteLLMAdapter.from_proxy_config(path)
        routed = adapter.validate()
        warn_routing_overrides(routed, proxy_routing_overrides(read_yaml(Path(path), "LiteLLM proxy config")
                                                               .get("router_settings")))
        listed = adapter.model_list
        # Serve with the validated settings, on the running proxy's model list once it has one.
        self._adapter = LiteLLMAdapter.from_proxy_config(
            path, embedder=adapter.embedder,
            model_list=lambda: proxy_server.llm_router.model_list if proxy_server.llm_router else listed(),
        )

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Drop any ``llm_router`` metadata the client sent: decisions are the router's to write.

        Args:
            user_api_key_dict: the caller's key (unused).
            cache: the proxy's cache (unused).
            data: the request data, changed in place.
            call_type: the kind of call (unused).

        Returns:
            ``data``, without client-written router metadata.
        """
        strip_client_metadata(data)
        return data

    async def async_post_call_failure_hook(
        self, request_data: dict[str, Any], original_exception: Exception, user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """Release every open attempt of a request the proxy gave up on (its failure event comes only once).

        Args:
            request_data: the request data (its metadata carries the router's request token).
            original_exception: the final error.
            user_api_key_dict: the caller's key (unused).
            traceback_str: the traceback (unused).
        """
        if decision_headers(request_data):
            await self.adapter.asettle({**request_data, "exception": original_exception}, success=False, final=True)

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        """Narrow a routed group's healthy deployments to the router's choice; other requests pass untouched.

        LiteLLM's deployment budget limiters in ``litellm.callbacks`` (exactly ``RouterBudgetLimiting``, not the
        proxy's subclasses for virtual-key budgets) narrow a routed group's deployments first, and the router
        chooses among those within their LiteLLM budget: the stricter of the two budgets wins.

        Args:
            model: the model group.
            healthy_deployments: what LiteLLM's health and cooldown filters left.
            messages: the chat messages (``None`` for embeddings and other non-chat calls).
            request_kwargs: the request; the decision goes into its metadata.
            parent_otel_span: LiteLLM's tracing span (passed on to its budget limiter).

        Returns:
            The chosen deployment alone; for a request the router does not route, ``healthy_deployments`` (of a
            routed group: those within their LiteLLM budget).

        Raises:
            litellm.RateLimitError: the group's budgets are exhausted and it has no fallback deployment (HTTP 429).
            ValueError: LiteLLM's budget limiter left no deployment of a routed group (its own error, ``No
                deployments available - crossed budget``), as LiteLLM would have raised it.
        """
        if not healthy_deployments or messages is None or not self.adapter.routes(model):
            return healthy_deployments
        for limiter in _budget_limiters():  # raises LiteLLM's own error when it leaves none
            healthy_deployments = await limiter.async_filter_deployments(
                model=model, healthy_deployments=healthy_deployments, messages=messages,
                request_kwargs=request_kwargs, parent_otel_span=parent_otel_span)
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

    def add_routes(self, app: FastAPI) -> None:
        """Add ``POST /llm-router/feedback``, ``GET /llm-router/status`` and ``GET /llm-router/metrics`` to the proxy's
        app, behind LiteLLM's key check (once per app).

        The check is LiteLLM's ``user_api_key_auth``, as on the proxy's own routes: the master key, and virtual keys
        as LiteLLM's route permissions allow. A check that fails without an HTTP answer of LiteLLM's is a 401.

        Args:
            app: the proxy's FastAPI app (``litellm.proxy.proxy_server.app``).
        """
        if any(isinstance(r, APIRoute) and r.path in (FEEDBACK_PATH, STATUS_PATH, METRICS_PATH)
               for r in app.router.routes):
            return
        checked = [Depends(_key_check())]
        app.add_api_route(FEEDBACK_PATH, self.feedback_endpoint, methods=["POST"], dependencies=checked,
                          tags=["llm-router"],
                          summary="Score the answer of a routed request (its x-llm-router-decision-id)")
        app.add_api_route(STATUS_PATH, self.status_endpoint, methods=["GET"], dependencies=checked,
                          tags=["llm-router"], summary="Budgets, spend, dual weights and phase of every routed group")
        app.add_api_route(METRICS_PATH, self.metrics_endpoint, methods=["GET"], dependencies=checked,
                          tags=["llm-router"], summary="The routers' Prometheus metrics (text exposition format)")

    async def status_endpoint(self) -> JSONResponse:
        """Every routed model group's :meth:`Router.status() <llm_router_plugin.Router.status>`.

        Returns:
            200 ``{"model_groups": {group: status}}``, groups in ``model_list`` order, each status a
            :class:`~llm_router_plugin.RouterStatus` as JSON (phase, decisions, next solve, and per deployment its
            limits, spend, live reservations, remaining budget and dual weights); 503 naming the budget ledger when it
            (a Redis server) cannot be reached.
        """
        try:
            groups = await self.adapter.astatus()
        except LedgerUnavailableError as exc:
            return _error(503, "ledger", str(exc))
        return JSONResponse({"model_groups": {group: status.model_dump(mode="json")
                                              for group, status in groups.items()}})

    async def metrics_endpoint(self) -> Response:
        """The routers' Prometheus metrics, every routed group's, without LiteLLM's own.

        Returns:
            200 with the text exposition (``text/plain; version=0.0.4``). A group whose status cannot be read (its
            ledger is unreachable) has ``llm_router_status_up{group=...} 0`` and no budget gauges.
        """
        return Response(await asyncio.to_thread(self._exposition), media_type=CONTENT_TYPE_LATEST)

    def _exposition(self) -> bytes:
        try:
            self.adapter.routers()  # built now, so that a group's budgets show before its first request
        except Exception as exc:  # e.g. its Redis ledger is down: the metrics of the routers built are still served
            _log.info("metrics: a routed group's router cannot be built now: %r", exc)
        return exposition()

    async def feedback_endpoint(self, request: Request) -> JSONResponse:
        """Attach a quality score to a decision: the body is ``{"decision_id": "...", "quality": 0.8}``.

        Args:
            request: the HTTP request (authenticated by the proxy's key check before this runs).

        Returns:
            200 ``{"decision_id", "quality", "status": "recorded"}``; 400 naming the field for a body that is not a
            JSON object, a missing or invalid ``decision_id`` or ``quality`` (a number in [0, 1]) or a decision whose
            call failed; 404 for a decision no routed group made. Errors have LiteLLM's shape,
            ``{"error": {"message", "type", "param", "code"}}``.
        """
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, too deeply nested, an int of too many digits
            body = None
        if not isinstance(body, dict):
            return _error(400, "body", 'must be a JSON object {"decision_id": "...", "quality": 0.8}')
        decision_id = body.get("decision_id")
        if not isinstance(decision_id, str) or not 0 < len(decision_id) <= MAX_DECISION_ID:
            return _error(400, "decision_id", "must be the x-llm-router-decision-id header of a routed response")
        try:
            quality = score("quality", body.get("quality"))
            await self.adapter.afeedback(decision_id, quality)
        except UnknownDecisionError:
            return _error(404, "decision_id", f"no routed request has decision {decision_id!r}")
        except LedgerUnavailableError as exc:  # another proxy's decision, maybe: the shared state cannot be read
            return _error(503, "ledger", str(exc))
        except ValueError as exc:  # the router's messages start with the argument's name
            field, _, message = str(exc).partition(": ")
            if field not in ("decision_id", "quality"):
                raise  # not the request's fault (e.g. a router that cannot be built): the proxy's 500
            return _error(400, field, message)
        return JSONResponse({"decision_id": decision_id, "quality": quality, "status": "recorded"})


def _budget_limiters() -> list[RouterBudgetLimiting]:
    """LiteLLM's deployment budget limiters registered in ``litellm.callbacks`` (those of its routers).

    The type must match exactly, as in LiteLLM's ``Router.get_router_deployment_budget_limiter``: the proxy's own
    subclasses (virtual-key model budgets) are not deployment budgets.
    """
    return [c for c in litellm.callbacks if type(c) is RouterBudgetLimiting]


def _key_check() -> Callable[..., Awaitable[Any]]:
    """LiteLLM's ``user_api_key_auth`` (same parameters, so FastAPI resolves them alike), failing closed."""
    from litellm.proxy._types import ProxyErrorTypes, ProxyException
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
    from litellm.proxy.common_utils.http_parsing_utils import safe_set_request_parsed_body

    def refusal() -> ProxyException:
        return ProxyException(message="Authentication Error: a key of this proxy is required", type="auth_error",
                              param="None", code=401)

    @functools.wraps(user_api_key_auth)
    async def checked(*args: Any, **kwargs: Any) -> Any:
        # The key alone decides: LiteLLM's check reads the body as a model call's (model access, end user) and fails
        # on one that is not a JSON object, so it is shown an empty one. The route reads and checks the body itself.
        safe_set_request_parsed_body(kwargs.get("request"), {})
        try:
            return await user_api_key_auth(*args, **kwargs)
        except ProxyException as exc:
            if exc.type != ProxyErrorTypes.no_db_connection:
                raise  # LiteLLM's own answer: 401, 403, its database outages
            # Without a database only the master key can be valid; LiteLLM answers any other key with a 400 that
            # names no field, which a client of this route would read as a bad body.
            raise refusal() from None
        except HTTPException:
            raise
        except Exception:
            # LiteLLM's handler of a failed check imports `prisma`, which litellm[proxy] does not install, so a request
            # without a key crashes it (a 500 on LiteLLM's own routes). A check that did not pass is a refusal.
            raise refusal() from None

    return checked


def _error(status: int, field: str, message: str) -> JSONResponse:
    """An error answer in the shape of LiteLLM's own, naming the field at fault."""
    kind = {404: "not_found_error", 503: "service_unavailable_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": f"{field}: {message}", "type": kind, "param": field,
                                   "code": str(status)}}, status_code=status)


def _running_proxy_config() -> str | None:
    """The config file of the LiteLLM proxy importing this module, if a proxy is (never imports the proxy itself)."""
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    path = getattr(proxy_server, "user_config_file_path", None)
    return path if isinstance(path, str) and path else None


#: The instance config.yaml names: ``callbacks: ["llm_router_litellm.proxy.router_callback"]``.
router_callback = ProxyCallback()
if (_config_path := _running_proxy_config()) is not None:
    router_callback.validate_proxy_config(_config_path)
    router_callback.add_routes(sys.modules["litellm.proxy.proxy_server"].app)
