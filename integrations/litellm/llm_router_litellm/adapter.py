"""The adapter between LiteLLM deployments and the router, shared by the SDK strategy and the proxy callback.

Mapping:

- A LiteLLM *model group* is routed when at least one of its deployments has an ``llm_router`` block in its
  ``model_info``; every deployment of that group is then a router deployment. Other groups pass through untouched.
- A deployment's router name is its ``model_info.id``. Its model profile (the key of its outcomes in history) is
  ``model_info.llm_router.model``, else ``litellm_params.model`` without the provider prefix
  (``openai/gpt-4o`` → ``gpt-4o``). The rest of the block are :class:`~llm_router_plugin.DeploymentConfig` fields:
  ``token_budget``, ``usd_budget``, ``window``, ``fallback``, prices.
- The router settings (``callback_settings.llm_router`` of the proxy's config.yaml, or ``settings=`` in Python) are
  :class:`~llm_router_plugin.RouterConfig` fields except ``deployments``. Each routed group gets its own router, with
  its own ledger and dual weights under ``<data_dir>/litellm/<group>-<hash>/``; all groups share one history store and
  one embedder.
- A decision travels with its request in ``metadata["llm_router"]``; the success and failure events read it back to
  settle the reservation with the actual tokens and cost, or release it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import litellm
import yaml
from litellm.exceptions import RateLimitErrorCategory, RateLimitType

from llm_router_plugin.config import DeploymentConfig, RouterConfig
from llm_router_plugin.embedding import Embedder, make_embedder
from llm_router_plugin.errors import BudgetExhaustedError, EmptyQueryError
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.router import Decision, Router

#: Key of the router settings in ``callback_settings``, of a deployment's block in ``model_info``, and of the
#: decision in a request's metadata.
KEY = "llm_router"
#: Prefix of the response headers that show the decision to the client.
HEADER_PREFIX = "x-llm-router-"
#: Error recorded for an earlier attempt of a request that LiteLLM retried or sent to a fallback.
SUPERSEDED = "superseded: LiteLLM retried the request or sent it to a fallback"

_log = logging.getLogger("llm_router_litellm")
_PLACEHOLDER = "settings-check"

ModelList = Callable[[], Sequence[Mapping[str, Any]]]


def deployment_id(deployment: Mapping[str, Any]) -> str:
    """The ``model_info.id`` of a LiteLLM deployment (``""`` if it has none)."""
    return str((deployment.get("model_info") or {}).get("id") or "")


def deployment_config(deployment: Mapping[str, Any]) -> DeploymentConfig:
    """The router deployment of a LiteLLM deployment (see the module docstring for the mapping).

    Args:
        deployment: a ``model_list`` entry: ``model_name``, ``litellm_params``, ``model_info``.

    Returns:
        The router's deployment config, named by ``model_info.id``.

    Raises:
        ValueError: the deployment has no ``model_info.id``, or its ``model_info.llm_router`` block is not a mapping
            or holds an invalid field (the message names the deployment and the field).
    """
    name = deployment_id(deployment)
    if not name:
        raise ValueError(f"model_info.id: deployment of model group {deployment.get('model_name')!r} needs a stable "
                         "id (its budget ledger is keyed by it)")
    block = (deployment.get("model_info") or {}).get(KEY) or {}
    if not isinstance(block, Mapping):
        raise ValueError(f"model_info.{KEY}: must be a mapping for deployment {name!r}, got {type(block).__name__}")
    if "name" in block:
        raise ValueError(f"model_info.{KEY}.name: deployment {name!r} is named by model_info.id; remove 'name'")
    fields = {**block, "name": name, "model": block.get("model") or _profile(deployment)}
    try:
        return DeploymentConfig.model_validate(fields)
    except ValueError as exc:
        raise ValueError(f"model_info.{KEY}: invalid settings for deployment {name!r}: {exc}") from None


def _profile(deployment: Mapping[str, Any]) -> str:
    model = str((deployment.get("litellm_params") or {}).get("model") or "")
    provider, _, rest = model.partition("/")
    return rest if rest and provider in litellm.provider_list else model


def decision_headers(request: Mapping[str, Any]) -> dict[str, str]:
    """The ``x-llm-router-*`` response headers of a routed request (empty for a request the router did not route).

    Args:
        request: the request data (it carries the decision in its metadata).

    Returns:
        ``decision-id``, ``deployment``, ``phase`` and ``reason`` headers; the reason is percent-encoded UTF-8.
    """
    entry = _entry(request)
    if not entry:
        return {}
    return {
        f"{HEADER_PREFIX}decision-id": str(entry["decision_id"]),
        f"{HEADER_PREFIX}deployment": str(entry["deployment"]),
        f"{HEADER_PREFIX}phase": str(entry["phase"]),
        # Header values must be Latin-1; the reason has λ, μ, ≥ …
        f"{HEADER_PREFIX}reason": quote(str(entry["reason"]), safe=" !#$&'()*+,./:;=?@[]~<>"),
    }


def _entry(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decision stored in a request's metadata (request data, or an event's ``litellm_params``)."""
    for key in ("metadata", "litellm_metadata"):
        metadata = request.get(key)
        if isinstance(metadata, Mapping) and isinstance(metadata.get(KEY), dict):
            return metadata[KEY]
    return None


class LiteLLMAdapter:
    """Routes requests of LiteLLM model groups with one router per routed group, and settles their outcomes.

    Args:
        model_list: returns LiteLLM's current ``model_list`` (read when a group is first seen).
        settings: router settings, :class:`~llm_router_plugin.RouterConfig` fields except ``deployments``.
        embedder: overrides the embedder the settings name.

    Attributes:
        settings: the validated settings (its ``deployments`` is a stand-in: each group's router has its own).
        embedder: the embedder all groups share.
        history: the history store all groups share (``<data_dir>/chroma``, or the configured Chroma server).

    Raises:
        ValueError: a setting is invalid (the message names it).
    """

    def __init__(
        self, model_list: ModelList, settings: Mapping[str, Any] | None = None, *, embedder: Embedder | None = None
    ) -> None:
        settings = dict(settings or {})
        if "deployments" in settings:
            raise ValueError(f"settings: 'deployments' come from the LiteLLM model_list (model_info.{KEY}); remove it")
        # Validated now, with a stand-in deployment, so that a bad setting fails at start-up and not on a request.
        self.settings = RouterConfig.from_dict({**settings, "deployments": [{"name": _PLACEHOLDER}]})
        self.embedder = embedder or make_embedder(
            self.settings.embedding_model, self.settings.embedding_threads, self.settings.embedding_keep
        )
        self.history = ChromaHistory.from_config(self.settings)
        self._model_list = model_list
        self._routers: dict[str, Router | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_proxy_config(cls, path: str | Path, *, embedder: Embedder | None = None) -> LiteLLMAdapter:
        """The adapter a LiteLLM proxy builds from a config.yaml (to inspect budgets and spend beside the proxy).

        Args:
            path: the proxy's config.yaml (``model_list`` and ``callback_settings.llm_router``).
            embedder: overrides the embedder the settings name.

        Returns:
            The adapter.

        Raises:
            ValueError: the file is not a LiteLLM config or a setting is invalid.
        """
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not isinstance(config.get("model_list"), list):
            raise ValueError(f"path: {path} is not a LiteLLM proxy config (no model_list)")
        model_list = list(config["model_list"])
        settings = (config.get("callback_settings") or {}).get(KEY)
        return cls(lambda: model_list, settings, embedder=embedder)

    def router(self, model_group: str) -> Router | None:
        """The router of a model group, or ``None`` if the group is not routed.

        Args:
            model_group: the LiteLLM model group (``model_name``).

        Returns:
            The group's router, built on first use.

        Raises:
            ValueError: a deployment of the group has invalid ``model_info.llm_router`` settings.
        """
        with self._lock:
            if model_group not in self._routers:
                self._routers[model_group] = self._build(model_group)
            return self._routers[model_group]

    def _build(self, model_group: str) -> Router | None:
        members = [d for d in self._model_list() if d.get("model_name") == model_group]
        if not any(KEY in (d.get("model_info") or {}) for d in members):
            return None
        # Readable, and distinct for groups whose names differ only in characters a folder name cannot hold.
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_group)[:40]
        digest = hashlib.sha256(model_group.encode()).hexdigest()[:8]
        folder = Path(self.settings.data_dir) / "litellm" / f"{slug}-{digest}"
        config = RouterConfig.from_dict({
            **self.settings.model_dump(), "data_dir": folder,
            "deployments": [deployment_config(d).model_dump() for d in members],
        })
        return Router(config, embedder=self.embedder, history=self.history)

    # ----------------------------------------------------------------------------------------------- routing

    def choose(
        self, model_group: str, healthy: Sequence[dict[str, Any]], messages: Sequence[Mapping[str, Any]] | None,
        request_kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Pick one of a request's healthy deployments and note the decision in the request's metadata.

        Args:
            model_group: the requested model group.
            healthy: the deployments LiteLLM's health, cooldown and budget filters left.
            messages: the chat messages; ``None`` (embeddings and other non-chat calls) is not routed.
            request_kwargs: the request's keyword arguments; the decision goes into its metadata.

        Returns:
            The chosen deployment, or ``None`` when the router does not route this request (unrouted group, no
            messages or no text, no healthy deployment the router knows): LiteLLM then chooses as usual.

        Raises:
            litellm.RateLimitError: no healthy deployment can afford the request and none is a fallback (HTTP 429;
                the message names every exhausted deployment and what it has left).
        """
        router = self.router(model_group)
        if router is None or messages is None:
            return None
        known = {d.name for d in router.config.deployments}
        candidates = [d for d in healthy if deployment_id(d) in known]
        if not candidates:
            return None
        try:
            decision = router.route(messages, prompt_tokens=_count_tokens(candidates[0], messages),
                                    deployments=[deployment_id(d) for d in candidates])
        except EmptyQueryError:
            return None
        except BudgetExhaustedError as exc:
            raise litellm.RateLimitError(
                message=f"llm-router: model group {model_group!r}: {exc}", llm_provider="llm-router",
                model=model_group, category=RateLimitErrorCategory.LITELLM_RATE_LIMIT,
                rate_limit_type=RateLimitType.BUDGET,
            ) from exc
        _remember(request_kwargs, model_group, decision)
        return next(d for d in candidates if deployment_id(d) == decision.deployment)

    async def achoose(
        self, model_group: str, healthy: Sequence[dict[str, Any]], messages: Sequence[Mapping[str, Any]] | None,
        request_kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Async :meth:`choose`: token counting, embedding, history and ledger work run off the event loop."""
        return await asyncio.to_thread(self.choose, model_group, healthy, messages, request_kwargs)

    # ----------------------------------------------------------------------------------------------- outcomes

    def settle(self, event: Mapping[str, Any], *, success: bool) -> None:
        """Settle the decisions of a request from LiteLLM's success or failure event.

        On success, the attempt that answered is recorded with the actual tokens, cost and latency, and earlier
        attempts of the same request (LiteLLM retried or fell back) are released. On failure, the failed attempt's
        reservation is released. Events of requests the router did not route are ignored.

        Args:
            event: the event's ``kwargs`` (``standard_logging_object`` and ``litellm_params``).
            success: whether the call succeeded.
        """
        entry = _entry(event.get("litellm_params") or {})
        if not entry:
            return
        log = event.get("standard_logging_object") or {}
        served_by = str(log.get("model_id") or "")
        attempts = [(a, router) for a in entry.get("attempts", [])
                    if (router := self.router(a["group"])) is not None and _is_open(router, a["decision_id"])]
        matching = [pair for pair in attempts if pair[0]["deployment"] == served_by]
        if not success:
            # Attempts run one after another: the oldest open one on this deployment is the one that failed.
            for attempt, router in matching[:1]:
                error = str(log.get("error_str") or event.get("exception") or "call failed")[:500]
                router.record(attempt["decision_id"], 0, 0, error=error)
            return
        for attempt, router in attempts:
            if matching and attempt is matching[-1][0]:
                router.record(attempt["decision_id"], **_usage(log))
            else:
                router.record(attempt["decision_id"], 0, 0, error=SUPERSEDED)

    async def asettle(self, event: Mapping[str, Any], *, success: bool) -> None:
        """Async :meth:`settle` (runs in a worker thread)."""
        await asyncio.to_thread(self.settle, event, success=success)


def _count_tokens(deployment: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> int | None:
    try:
        return int(litellm.token_counter(model=str(deployment["litellm_params"]["model"]), messages=list(messages)))
    except Exception as exc:  # a count only feeds the estimate: never fail a request over it
        _log.warning("token counting failed (%s); the router estimates prompt tokens from the text", exc)
        return None


def _remember(request_kwargs: dict[str, Any], model_group: str, decision: Decision) -> None:
    key = "litellm_metadata" if "litellm_metadata" in request_kwargs else "metadata"
    metadata = request_kwargs.get(key)
    if not isinstance(metadata, dict):
        metadata = request_kwargs[key] = {}
    # An earlier attempt of this request (LiteLLM retried or fell back) left its decision here.
    previous = metadata.get(KEY)
    earlier = previous.get("attempts", []) if isinstance(previous, dict) else []
    metadata[KEY] = {
        "decision_id": decision.id, "group": model_group, "deployment": decision.deployment, "model": decision.model,
        "phase": decision.phase, "reason": decision.reason, "prompt_tokens": decision.prompt_tokens,
        "attempts": [*earlier, {"group": model_group, "decision_id": decision.id, "deployment": decision.deployment}],
    }


def _is_open(router: Router, decision_id: str) -> bool:
    logged = router.decisions.get(decision_id)
    return logged is not None and logged.status == "open"


def _usage(log: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` arguments from a standard logging payload."""
    cost, start, end, first = (_number(log.get(k)) for k in ("response_cost", "startTime", "endTime",
                                                              "completionStartTime"))
    return {
        "prompt_tokens": int(log.get("prompt_tokens") or 0),
        "completion_tokens": int(log.get("completion_tokens") or 0),
        # LiteLLM reports 0.0 for a model it has no price for: let the router use the deployment's prices instead.
        "cost_usd": cost if cost else None,
        "latency_s": end - start if start is not None and end is not None else None,
        "ttft_s": first - start if start is not None and first is not None and log.get("stream") else None,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None
