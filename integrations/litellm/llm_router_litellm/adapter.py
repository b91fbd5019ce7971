"""The adapter between LiteLLM deployments and the router, shared by the SDK strategy and the proxy callback.

Mapping:

- A LiteLLM *model group* is routed when at least one of its deployments has an ``llm_router`` block in its
  ``model_info``; every deployment of that group is then a router deployment. Other groups pass through untouched.
- A deployment's router name is its ``model_info.id``. Its model profile (the key of its outcomes in history) is
  ``model_info.llm_router.model``, else ``litellm_params.model`` without the provider prefix
  (``openai/gpt-4o`` → ``gpt-4o``). The rest of the block are :class:`~llm_router_plugin.DeploymentConfig` fields:
  ``token_budget``, ``usd_budget``, ``window``, ``fallback``, prices.
- The router settings (``callback_settings.llm_router`` of the proxy's config.yaml, or ``settings=`` in Python) are
  :class:`~llm_router_plugin.RouterConfig` fields except ``deployments``. When they name no ``ledger`` and the proxy's
  ``router_settings`` name LiteLLM's own Redis (``redis_host`` and ``redis_port``, with ``redis_password``), the
  budgets are kept on that Redis (see :func:`litellm_redis_ledger`). Each routed group gets its own router, with
  its own ledger and dual weights under ``<data_dir>/litellm/<group>-<hash>/`` (on a Redis ledger: under the key
  namespace ``<ledger_namespace>:<group>-<hash>``, which the same group on other proxies shares); all groups share one
  history store and one embedder. Its Prometheus metrics carry the label ``group="<model group>"`` (see
  :mod:`llm_router_plugin.metrics`; off with the setting ``metrics: false``).
- Prices: a deployment's ``llm_router`` block may set ``input_usd_per_mtok``/``output_usd_per_mtok``; else they
  come from LiteLLM (``litellm_params``/``model_info`` ``input_cost_per_token`` and ``output_cost_per_token``, then
  LiteLLM's price map for ``litellm_params.model``), else the router fits them on history.
- Every request of a routed group is routed and budgeted, text or not (images, files, tool calls, empty turns);
  an empty message list is refused with HTTP 400, never passed through.
- The attempts of a request (LiteLLM retries and fallbacks, and calls that share one metadata dict) are kept
  server-side, keyed by a request token the adapter draws and writes into ``metadata["llm_router"]``; the client
  never sees the token, and anything a client writes under ``llm_router`` is ignored (the proxy callback also strips
  it on the way in). A success event charges the open attempt on the deployment that answered with the actual tokens
  and cost; a failure event releases the failed attempt. An attempt no event settles is charged at its hold when it
  expires: ambiguity costs budget, never lets a call go uncharged.
- A budget refusal is remembered with the request: LiteLLM's retries of it get the same refusal without counting as
  new traffic.
- Quality feedback names only a decision id: :meth:`LiteLLMAdapter.feedback` finds the group whose router (and
  decision log) made it. The proxy's ``POST /llm-router/feedback`` route calls it; its ``GET /llm-router/status``
  route shows :meth:`LiteLLMAdapter.status`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import litellm
from litellm.exceptions import RateLimitErrorCategory, RateLimitType

from llm_router_plugin._files import read_yaml
from llm_router_plugin.config import DeploymentConfig, RouterConfig
from llm_router_plugin.embedding import Embedder
from llm_router_plugin.embedding_batch import configured_embedder
from llm_router_plugin.errors import (
    BudgetExhaustedError,
    EmptyQueryError,
    LedgerUnavailableError,
    UnknownDecisionError,
)
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.metrics import RouterMetrics
from llm_router_plugin.router import Decision, Router, RouterStatus
from llm_router_plugin.validation import optional_token_count, score, token_count

#: Key of the router settings in ``callback_settings``, of a deployment's block in ``model_info``, and of the
#: decision in a request's metadata.
KEY = "llm_router"
#: Prefix of the response headers that show the decision to the client.
HEADER_PREFIX = "x-llm-router-"

_log = logging.getLogger("llm_router_litellm")
_PLACEHOLDER = "settings-check"
#: Requests whose attempts are kept at most (the oldest are forgotten first; their holds then expire and are charged).
MAX_TRACKED_REQUESTS = 100_000

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
    fields = {**_litellm_prices(deployment), **block, "name": name, "model": block.get("model") or _profile(deployment)}
    try:
        return DeploymentConfig.model_validate(fields)
    except ValueError as exc:
        raise ValueError(f"model_info.{KEY}: invalid settings for deployment {name!r}: {exc}") from None


def _litellm_prices(deployment: Mapping[str, Any]) -> dict[str, float]:
    """USD per million tokens of a deployment as LiteLLM knows them (its overrides, then its price map); may be empty.

    LiteLLM reports 0 for a model it has no price for, so a zero price counts as unknown.
    """
    params = deployment.get("litellm_params") or {}
    info = deployment.get("model_info") or {}
    per_token = {side: params.get(f"{side}_cost_per_token") or info.get(f"{side}_cost_per_token")
                 for side in ("input", "output")}
    if not all(per_token.values()):
        known: Mapping[str, Any]
        try:
            known = litellm.get_model_info(model=str(params.get("model") or ""))
        except Exception:  # LiteLLM raises for a model its price map does not have
            known = {}
        per_token = {side: per_token[side] or known.get(f"{side}_cost_per_token") for side in per_token}
    if not any(isinstance(v, int | float) and v > 0 for v in per_token.values()):
        return {}
    return {f"{side}_usd_per_mtok": float(v or 0.0) * 1e6 for side, v in per_token.items()}


def _profile(deployment: Mapping[str, Any]) -> str:
    model = str((deployment.get("litellm_params") or {}).get("model") or "")
    provider, _, rest = model.partition("/")
    return rest if rest and provider in litellm.provider_list else model


def litellm_redis_ledger(router_settings: Any) -> tuple[dict[str, str], str | None]:
    """The ledger settings that keep the budgets on the Redis of a LiteLLM proxy's ``router_settings``.

    As LiteLLM does, its Redis is used when both ``redis_host`` and ``redis_port`` are set, and a value
    ``os.environ/NAME`` is read from the environment variable ``NAME``. A password given so becomes
    ``ledger_password_env: NAME`` (it stays in the environment); a password written in the config is returned apart,
    for the ledger alone: it is never put in a URL or in the settings.

    Args:
        router_settings: the proxy config's ``router_settings`` (``None`` or anything but a mapping: no Redis).

    Returns:
        (``ledger`` as ``redis://host:port/0``, and ``ledger_password_env`` if the password is named so; the password
        written in the config or ``None``), or (``{}``, ``None``) when LiteLLM has no Redis.

    Raises:
        ValueError: a host or port that is empty, not valid, or names an environment variable that is not set (the
            message names ``router_settings.<key>``, never a password).
    """
    if not isinstance(router_settings, Mapping):
        return {}, None
    host, port = (router_settings.get(k) for k in ("redis_host", "redis_port"))
    if host is None or port is None:
        return {}, None
    host, port = _environ("redis_host", host), _environ("redis_port", port)
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]+", host):
        raise ValueError("router_settings.redis_host: must be a host name or address")
    if isinstance(port, bool) or not str(port).isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"router_settings.redis_port: must be a port number 1-65535, got {port!r}")
    settings = {"ledger": f"redis://{f'[{host}]' if ':' in host else host}:{int(port)}/0"}
    password = router_settings.get("redis_password")
    if isinstance(password, str) and password.startswith(_ENVIRON):
        return {**settings, "ledger_password_env": password.removeprefix(_ENVIRON)}, None
    return settings, None if password is None else str(password)


_ENVIRON = "os.environ/"


def _on_litellm_redis(settings: Any, router_settings: Any) -> tuple[Any, str | None]:
    """Router settings that name no ``ledger``, moved onto LiteLLM's Redis if it has one; and that Redis' password.

    Settings that are not a mapping are returned as they are, for the adapter to refuse with its message.
    """
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping) or "ledger" in settings:
        return settings, None
    ledger, password = litellm_redis_ledger(router_settings)
    if "ledger_password_env" in settings:
        password = None  # the router settings' own password variable wins
    return {**ledger, **settings}, password


def _environ(key: str, value: Any) -> Any:
    """A ``router_settings`` value, read from the environment if it is ``os.environ/NAME`` (as LiteLLM reads it)."""
    if not (isinstance(value, str) and value.startswith(_ENVIRON)):
        return value
    variable = value.removeprefix(_ENVIRON)
    resolved = os.environ.get(variable)
    if not resolved:
        raise ValueError(f"router_settings.{key}: the environment variable {variable!r} it names is "
                         f"{'empty' if resolved == '' else 'not set'}")
    return resolved


def warn_routing_overrides(groups: Sequence[str], overridden: Sequence[str]) -> str | None:
    """Log one warning naming what of LiteLLM's own routing the router overrides for the groups it routes.

    Args:
        groups: the routed model groups.
        overridden: one clause per overridden setting, ``{it}`` standing for the routed groups.

    Returns:
        The warning, or ``None`` (nothing logged) when no group is routed or nothing is overridden.
    """
    if not groups or not overridden:
        return None
    named = ", ".join(repr(group) for group in groups)
    it = "it" if len(groups) == 1 else "them"
    message = (f"llm-router routes model group{'s' if len(groups) > 1 else ''} {named}; "
               + "; ".join(clause.format(it=it) for clause in overridden))
    _log.warning("%s", message)
    return message


def proxy_routing_overrides(router_settings: Any) -> list[str]:
    """What of a proxy config's ``router_settings`` the router overrides for its groups (clauses for
    :func:`warn_routing_overrides`).

    In the proxy the router narrows a routed group's deployments to its choice in LiteLLM's deployment filter hook,
    so the routing strategy still runs, on that one deployment; routing plugins narrow the deployments after that
    hook, so a choice they exclude fails the request.

    Args:
        router_settings: the config's ``router_settings`` (anything else counts as none).

    Returns:
        The clauses, empty when nothing is overridden.
    """
    settings = router_settings if isinstance(router_settings, Mapping) else {}
    overridden = []
    if strategy := settings.get("routing_strategy"):
        overridden.append(f"router_settings.routing_strategy {strategy!r} is not used for {{it}} (it still applies "
                          "to other groups)")
    if settings.get("plugins"):
        overridden.append("router_settings.plugins still narrow {it} after the router's choice, and a choice they "
                          "exclude fails the request")
    return overridden


def decision_headers(request: Mapping[str, Any]) -> dict[str, str]:
    """The ``x-llm-router-*`` response headers of a routed request (empty for a request the router did not route).

    Args:
        request: the request data (it carries the decision in its metadata).

    Returns:
        ``decision-id``, ``deployment``, ``phase`` and ``reason`` headers; the reason is percent-encoded UTF-8.
    """
    entry = _entry(request)
    if not entry or "decision_id" not in entry:
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


def strip_client_metadata(data: dict[str, Any]) -> None:
    """Remove anything a client wrote under ``llm_router`` in a request's metadata (it is the router's to write).

    Args:
        data: the request data, as the proxy's pre-call hook receives it.
    """
    for key in ("metadata", "litellm_metadata"):
        metadata = data.get(key)
        if isinstance(metadata, dict):
            metadata.pop(KEY, None)
            requester = metadata.get("requester_metadata")
            if isinstance(requester, dict):
                requester.pop(KEY, None)


@dataclass
class _Attempt:
    group: str
    decision_id: str
    deployment: str


@dataclass
class _Tracked:
    """What the adapter keeps of one request: its attempts, and the refusal (message) its retries get per group."""

    attempts: list[_Attempt] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    # Events of one request's calls arrive concurrently: each must pick, and settle, a different attempt.
    settling: threading.Lock = field(default_factory=threading.Lock)


class LiteLLMAdapter:
    """Routes requests of LiteLLM model groups with one router per routed group, and settles their outcomes.

    Args:
        model_list: returns LiteLLM's current ``model_list`` (read when a group is first seen).
        settings: router settings, :class:`~llm_router_plugin.RouterConfig` fields except ``deployments``.
        embedder: overrides the embedder the settings name.
        ledger_password: the Redis ledger's password when it does not come from ``ledger_password_env`` (LiteLLM's
            ``router_settings.redis_password``); kept apart from the settings, so never dumped or logged with them.

    Attributes:
        settings: the validated settings (its ``deployments`` is a stand-in: each group's router has its own).
        embedder: the embedder all groups share.
        history: the history store all groups share (``<data_dir>/chroma``, or the configured Chroma server).

    Raises:
        ValueError: a setting is invalid (the message names it).
    """

    def __init__(
        self, model_list: ModelList, settings: Mapping[str, Any] | None = None, *, embedder: Embedder | None = None,
        ledger_password: str | None = None,
    ) -> None:
        settings = dict(settings or {})
        if "deployments" in settings:
            raise ValueError(f"settings: 'deployments' come from the LiteLLM model_list (model_info.{KEY}); remove it")
        # Validated now, with a stand-in deployment, so that a bad setting fails at start-up and not on a request.
        self.settings = RouterConfig.from_dict({**settings, "deployments": [{"name": _PLACEHOLDER}]})
        self.embedder = embedder or configured_embedder(self.settings)
        self.history = ChromaHistory.from_config(self.settings)
        self._model_list = model_list
        self._ledger_password = ledger_password
        self._routers: dict[str, Router] = {}
        self._lock = threading.Lock()
        self._requests: OrderedDict[str, _Tracked] = OrderedDict()
        self._requests_lock = threading.Lock()

    @property
    def model_list(self) -> ModelList:
        """The callable that returns LiteLLM's current ``model_list``."""
        return self._model_list

    @classmethod
    def from_proxy_config(
        cls, path: str | Path, *, embedder: Embedder | None = None, model_list: ModelList | None = None
    ) -> LiteLLMAdapter:
        """The adapter a LiteLLM proxy builds from a config.yaml (to inspect budgets and spend beside the proxy).

        Args:
            path: the proxy's config.yaml: ``model_list``, ``callback_settings.llm_router``, and ``router_settings``
                for LiteLLM's Redis (the budgets' ledger when the router settings name none: see
                :func:`litellm_redis_ledger`).
            embedder: overrides the embedder the settings name.
            model_list: serve this model list instead of the file's (the running proxy's).

        Returns:
            The adapter.

        Raises:
            FileNotFoundError: there is no such file (the message names it).
            ValueError: the file is not valid YAML (the message names the file and line), not a LiteLLM config, or
                a setting is invalid.
        """
        config = read_yaml(Path(path), "LiteLLM proxy config")
        if not isinstance(config, dict) or not isinstance(config.get("model_list"), list):
            raise ValueError(f"path: {path} is not a LiteLLM proxy config (no model_list)")
        listed = list(config["model_list"])
        settings, password = _on_litellm_redis((config.get("callback_settings") or {}).get(KEY),
                                               config.get("router_settings"))
        return cls(model_list or (lambda: listed), settings, embedder=embedder, ledger_password=password)

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
                if not self.routes(model_group):
                    return None  # not remembered: a name a client made up must not grow the cache
                self._routers[model_group] = self._build(model_group)
            return self._routers[model_group]

    def routes(self, model_group: str) -> bool:
        """Whether a model group is routed: one of its deployments has a ``model_info.llm_router`` block.

        Read from the model list alone (nothing is built), so it is cheap enough for every request.

        Args:
            model_group: the LiteLLM model group (``model_name``).

        Returns:
            Whether :meth:`router` gives the group a router.
        """
        return any(d.get("model_name") == model_group and KEY in (d.get("model_info") or {})
                   for d in self._model_list())

    def validate(self) -> list[str]:
        """Build the router of every routed group now, so that a bad setting fails at start, not on a request.

        Returns:
            The routed model groups.

        Raises:
            ValueError: a routed deployment's settings are invalid, two deployments share a ``model_info.id``, or a
                USD budget has no price source (the message names the deployment and the field).
        """
        deployments = list(self._model_list())
        ids = [deployment_id(d) for d in deployments if deployment_id(d)]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model_info.id: deployments share ids {duplicates}; each needs its own (budgets are "
                             "kept per id)")
        groups = list(dict.fromkeys(str(d.get("model_name")) for d in deployments))
        return [group for group in groups if self.router(group) is not None]

    def _build(self, model_group: str) -> Router:
        members = [d for d in self._model_list() if d.get("model_name") == model_group]
        # Readable, and distinct for groups whose names differ only in characters a folder name cannot hold.
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_group)[:40]
        label = f"{slug}-{hashlib.sha256(model_group.encode()).hexdigest()[:8]}"
        config = RouterConfig.from_dict({
            **self.settings.model_dump(), "data_dir": Path(self.settings.data_dir) / "litellm" / label,
            # On a shared Redis each group keeps its own keys (dual weights, decision count …), and proxies that
            # serve the same group share them.
            "ledger_namespace": f"{self.settings.ledger_namespace}:{label}",
            "deployments": [deployment_config(d).model_dump() for d in members],
        })
        return Router(config, embedder=self.embedder, history=self.history, ledger_password=self._ledger_password,
                      metrics=RouterMetrics(model_group) if config.metrics else None)

    def routers(self) -> dict[str, Router]:
        """The router of every routed group, in ``model_list`` order (routers not built yet are built).

        Returns:
            Model group → its router.

        Raises:
            ValueError: a deployment of a group has invalid ``model_info.llm_router`` settings.
        """
        groups = dict.fromkeys(str(d.get("model_name")) for d in self._model_list())
        return {group: router for group in groups if (router := self.router(group)) is not None}

    # ----------------------------------------------------------------------------------------------- routing

    def choose(
        self, model_group: str, healthy: Sequence[dict[str, Any]], messages: Sequence[Mapping[str, Any]] | None,
        request_kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Pick one of a request's healthy deployments and note the decision in the request's metadata.

        Args:
            model_group: the requested model group.
            healthy: the deployments LiteLLM's filters left (health, cooldown and budget limiter; in the proxy the
                callback runs the budget limiter before it chooses).
            messages: the chat messages; ``None`` (embeddings and other non-chat calls) is not routed.
            request_kwargs: the request's keyword arguments; the decision goes into its metadata.

        Returns:
            The chosen deployment, or ``None`` when the router does not route this request (unrouted group, a
            non-chat call, no healthy deployment the router knows): LiteLLM then chooses as usual.

        Raises:
            litellm.RateLimitError: no healthy deployment can afford the request and none is a fallback (HTTP 429;
                the message names every exhausted deployment and what it has left). Not retried by LiteLLM, and a
                retry of the same request gets the same refusal without reaching the router again.
            litellm.BadRequestError: the request cannot be budgeted: an empty message list, or a ``max_tokens``
                that is not a positive whole number (HTTP 400).
            litellm.ServiceUnavailableError: the budget ledger (a Redis server) cannot be reached, so budgets cannot
                be checked and nothing is served (HTTP 503, naming the ledger). Not retried by LiteLLM.
        """
        router = self.router(model_group)
        if router is None or messages is None:
            return None
        known = {d.name for d in router.config.deployments}
        candidates = [d for d in healthy if deployment_id(d) in known]
        if not candidates:
            return None
        max_tokens, choices = _completion_limits(model_group, request_kwargs)
        token, tracked = self._track(request_kwargs, router.config.reservation_timeout_s)
        refused = tracked.refused.get(model_group)
        if refused is not None:
            raise _budget_refusal(model_group, refused)  # a retry of a refused request: not counted as new traffic
        try:
            decision = router.route(
                messages, prompt_tokens=_count_tokens(candidates[0], messages, request_kwargs.get("tools")),
                max_tokens=max_tokens, n=choices, deployments=[deployment_id(d) for d in candidates],
            )
        except BudgetExhaustedError as exc:
            tracked.refused[model_group] = str(exc)  # the message only: an exception would pin the request's frames
            raise _budget_refusal(model_group, str(exc)) from None
        except LedgerUnavailableError as exc:
            raise _ledger_unavailable(model_group, exc) from None
        except EmptyQueryError as exc:
            raise _bad_request(model_group, exc) from None
        with self._requests_lock:
            tracked.attempts.append(_Attempt(model_group, decision.id, decision.deployment))
        _remember(request_kwargs, token, model_group, decision)
        return next(d for d in candidates if deployment_id(d) == decision.deployment)

    def _track(self, request_kwargs: dict[str, Any], ttl: float) -> tuple[str, _Tracked]:
        """The request token and server-side state of a request (new unless an earlier attempt of it made them).

        Requests older than ``ttl`` seconds (twice the reservation timeout: their holds have been charged or settled
        by then) are forgotten first, then the oldest beyond :data:`MAX_TRACKED_REQUESTS`.
        """
        entry = _entry(request_kwargs)
        token = entry.get("request") if entry else None
        with self._requests_lock:
            if isinstance(token, str) and token in self._requests:
                return token, self._requests[token]
            now = time.monotonic()
            while self._requests and (len(self._requests) >= MAX_TRACKED_REQUESTS
                                      or now - next(iter(self._requests.values())).created > 2 * ttl):
                self._requests.popitem(last=False)
            # A token the adapter did not draw (absent, or written by a client) starts a new request.
            token = uuid.uuid4().hex
            tracked = self._requests[token] = _Tracked()
        _metadata(request_kwargs)[KEY] = {"request": token}  # so that a retry of a refused request is known
        return token, tracked

    async def achoose(
        self, model_group: str, healthy: Sequence[dict[str, Any]], messages: Sequence[Mapping[str, Any]] | None,
        request_kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Async :meth:`choose`: token counting, embedding, history and ledger work run off the event loop."""
        return await asyncio.to_thread(self.choose, model_group, healthy, messages, request_kwargs)

    # ----------------------------------------------------------------------------------------------- outcomes

    def settle(self, event: Mapping[str, Any], *, success: bool, final: bool = False) -> None:
        """Settle the decisions of a request from LiteLLM's success or failure event.

        On success, the oldest open attempt on the deployment that answered is charged the actual tokens, cost and
        latency (without a deployment in the event: the oldest open attempt). On failure, the oldest open attempt on
        the failing deployment is released; a ``final`` failure (the proxy gave up on the request) releases every
        open attempt. Usage reported after a release is still charged (see :meth:`Router.record`), and an attempt no
        event settles is charged at its hold when it expires. The attempts are the adapter's own record of the
        request, found by the token it wrote into the request's metadata: an event of a request the router did not
        route, or with a token it did not draw, is ignored.

        Args:
            event: the event's ``kwargs`` (``standard_logging_object`` and ``litellm_params``), or the request data.
            success: whether the call succeeded.
            final: the request as a whole failed (no attempt of it will answer any more).
        """
        entry = _entry(event.get("litellm_params") or {}) or _entry(event)
        with self._requests_lock:
            tracked = self._requests.get(str((entry or {}).get("request")))
        if tracked is None:
            return
        with tracked.settling:
            self._settle(tracked, event, success, final)

    def _settle(self, tracked: _Tracked, event: Mapping[str, Any], success: bool, final: bool) -> None:
        with self._requests_lock:
            attempts = list(tracked.attempts)
        log = event.get("standard_logging_object") or {}
        served_by = str(log.get("model_id") or "")
        status = {a.decision_id: (a, router, _status(router, a.decision_id)) for a in attempts
                  if (router := self.router(a.group)) is not None}
        open_attempts = [(a, router) for a, router, state in status.values() if state == "open"]
        if success:
            # The answering attempt: open ones first, then one a failure report released (usage still counts).
            answering = [(a, router) for a, router, state in sorted(status.values(), key=lambda v: v[2] != "open")
                         if state in ("open", "failed") and (a.deployment == served_by or not served_by)]
            for attempt, router in answering[:1]:
                router.record(attempt.decision_id, **_usage(log))
            return
        matching = [pair for pair in open_attempts if pair[0].deployment == served_by]
        error = str(log.get("error_str") or event.get("exception") or "call failed")[:500]
        # Attempts run one after another: the oldest open one on this deployment is the one that failed.
        for attempt, router in open_attempts if final else matching[:1]:
            router.record(attempt.decision_id, 0, 0, error=error)

    async def asettle(self, event: Mapping[str, Any], *, success: bool, final: bool = False) -> None:
        """Async :meth:`settle` (runs in a worker thread)."""
        await asyncio.to_thread(self.settle, event, success=success, final=final)

    def feedback(self, decision_id: str, quality: float) -> str:
        """Attach a quality score to a decision of whichever routed group made it (see :meth:`Router.feedback`).

        The groups' decision logs are searched in ``model_list`` order; a group's router is built if this process
        has not built it yet (a decision made before a restart is found too).

        Args:
            decision_id: the decision, as in the ``x-llm-router-decision-id`` response header.
            quality: score in [0, 1].

        Returns:
            The model group whose router made the decision.

        Raises:
            UnknownDecisionError: no routed group made that decision.
            LedgerUnavailableError: the decision is not this proxy's, and a group's shared learning state (Redis)
                cannot be read to find another proxy's.
            ValueError: quality outside [0, 1] (or not a number), or the decision's call failed (the message names
                the argument).
        """
        quality = score("quality", quality)  # before any lookup: a bad score is refused whatever the id
        routers = list(self.routers().items())
        # This proxy's own decisions first: they need no shared state, so a Redis outage does not stop them.
        for group, router in routers:
            if router.decisions.get(decision_id) is not None:
                router.feedback(decision_id, quality)
                return group
        unreachable: LedgerUnavailableError | None = None
        for group, router in routers:  # then another proxy's, through each group's shared learning state
            try:
                known = router.knows(decision_id)
            except LedgerUnavailableError as exc:
                unreachable = exc
                continue
            if known:
                router.feedback(decision_id, quality)
                return group
        if unreachable is not None:
            raise unreachable  # it may be another proxy's decision: that cannot be told now
        raise UnknownDecisionError(f"decision_id: unknown decision {decision_id!r}")

    async def afeedback(self, decision_id: str, quality: float) -> str:
        """Async :meth:`feedback` (runs in a worker thread)."""
        return await asyncio.to_thread(self.feedback, decision_id, quality)

    def status(self) -> dict[str, RouterStatus]:
        """The router status of every routed group, in ``model_list`` order (routers not built yet are built).

        Returns:
            Model group → its router's :meth:`~llm_router_plugin.Router.status`.

        Raises:
            LedgerUnavailableError: the budget ledger (a Redis server) cannot be reached.
        """
        groups = dict.fromkeys(str(d.get("model_name")) for d in self._model_list())
        # One group at a time: a ledger that is down fails the first group's status (a 503 naming it), before a
        # router not built yet would fail to connect to it.
        return {group: router.status() for group in groups if (router := self.router(group)) is not None}

    async def astatus(self) -> dict[str, RouterStatus]:
        """Async :meth:`status` (runs in a worker thread)."""
        return await asyncio.to_thread(self.status)


def _count_tokens(deployment: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], tools: Any) -> int | None:
    try:
        # Tool schemas are part of the prompt; images at LiteLLM's default count (a high-detail image URL would
        # otherwise be fetched over the network).
        return int(litellm.token_counter(model=str(deployment["litellm_params"]["model"]), messages=list(messages),
                                         tools=tools if isinstance(tools, list) else None,
                                         use_default_image_token_count=True))
    except Exception as exc:  # a count only feeds the estimate: never fail a request over it
        _log.warning("token counting failed (%s); the router estimates prompt tokens from the text", exc)
        return None


def _metadata(request_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's metadata dict (created if absent). Retries share it, fallbacks copy it: the token travels."""
    key = "litellm_metadata" if "litellm_metadata" in request_kwargs else "metadata"
    metadata = request_kwargs.get(key)
    if not isinstance(metadata, dict):
        metadata = request_kwargs[key] = {}
    return metadata


def _remember(request_kwargs: dict[str, Any], token: str, model_group: str, decision: Decision) -> None:
    _metadata(request_kwargs)[KEY] = {
        "request": token, "decision_id": decision.id, "group": model_group, "deployment": decision.deployment,
        "model": decision.model, "phase": decision.phase, "reason": decision.reason,
        "prompt_tokens": decision.prompt_tokens,
    }


def _completion_limits(model_group: str, request_kwargs: Mapping[str, Any]) -> tuple[int | None, int]:
    """The request's completion limit per choice and its number of choices (``n``).

    Raises:
        litellm.BadRequestError: either is not a positive whole number (HTTP 400).
    """
    limit = next((request_kwargs[k] for k in ("max_completion_tokens", "max_tokens")
                  if request_kwargs.get(k) is not None), None)
    choices = request_kwargs.get("n")
    try:
        checked = optional_token_count("max_tokens", limit), token_count("n", 1 if choices is None else choices)
    except ValueError as exc:
        raise _bad_request(model_group, exc) from None
    if checked[0] == 0 or checked[1] == 0:
        raise _bad_request(model_group, ValueError("max_tokens/n: must be at least 1"))
    return checked


def _bad_request(model_group: str, exc: Exception) -> litellm.BadRequestError:
    return litellm.BadRequestError(message=f"llm-router: model group {model_group!r}: {exc}", model=model_group,
                                   llm_provider="llm-router")


def _budget_refusal(model_group: str, reason: str) -> litellm.RateLimitError:
    refusal = litellm.RateLimitError(
        message=f"llm-router: model group {model_group!r}: {reason}", llm_provider="llm-router", model=model_group,
        category=RateLimitErrorCategory.LITELLM_RATE_LIMIT, rate_limit_type=RateLimitType.BUDGET,
    )
    refusal.num_retries = 0  # LiteLLM reads this: retrying a budget refusal cannot succeed
    return refusal


def _ledger_unavailable(model_group: str, exc: LedgerUnavailableError) -> litellm.ServiceUnavailableError:
    refusal = litellm.ServiceUnavailableError(
        message=f"llm-router: model group {model_group!r}: {exc}", llm_provider="llm-router", model=model_group,
    )
    refusal.num_retries = 0  # LiteLLM reads this: its immediate retries would meet the same outage
    return refusal


def _status(router: Router, decision_id: str) -> str | None:
    logged = router.decisions.get(decision_id)
    return None if logged is None else logged.status


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
