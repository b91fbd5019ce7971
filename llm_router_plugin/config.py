"""Router configuration: one pydantic model, loadable from YAML or a dict.

Budgets are per deployment and per window. A deployment names a *model profile* (the key its outcomes are stored
under in history), so several deployments of one model share what history knows about that model.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_router_plugin._files import read_yaml
from llm_router_plugin.embedding import Backend, check_backend

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
REDIS_SCHEMES = ("redis", "rediss")


@functools.lru_cache(maxsize=256)  # read on every route for every budgeted deployment
def parse_window(window: str) -> float | None:
    """Return a budget window's length in seconds, or ``None`` for ``"total"`` (never resets).

    Args:
        window: ``"total"`` or a duration such as ``"30m"``, ``"1h"``, ``"1d"``, ``"1w"``.

    Returns:
        The window length in seconds, or ``None`` for a budget that never resets.

    Raises:
        ValueError: the text is neither ``"total"`` nor a positive duration.
    """
    if window.strip().lower() == "total":
        return None
    match = _DURATION.match(window.lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"window must be 'total' or a positive duration like '1h' or '1d', got {window!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def is_redis_url(ledger: str) -> bool:
    """Whether a ``ledger`` setting names a Redis server (``redis://`` or ``rediss://``) rather than ``"sqlite"``."""
    return urlsplit(ledger).scheme.lower() in REDIS_SCHEMES


def validate_ledger(ledger: str) -> str:
    """Check a ``ledger`` setting: ``"sqlite"`` or a Redis URL without a password (messages never repeat the URL).

    Raises:
        ValueError: anything else, naming the field ``ledger``.
    """
    if ledger == "sqlite":
        return ledger
    try:
        url = urlsplit(ledger)
        port = url.port
    except ValueError:
        raise ValueError("ledger: not a valid redis:// or rediss:// URL (bad host or port)") from None
    if url.scheme.lower() not in REDIS_SCHEMES:
        raise ValueError(
            "ledger: must be 'sqlite' or a redis://host:port/db or rediss://host:port/db URL, "
            f"got {'scheme ' + repr(url.scheme) if url.scheme else repr(ledger) if len(ledger) < 20 else 'no scheme'}"
        )
    if url.password is not None or "password" in parse_qs(url.query):
        raise ValueError(
            "ledger: put the password in the environment variable named by ledger_password_env, not in the URL"
        )
    if not url.hostname:
        raise ValueError("ledger: the Redis URL names no host (redis://host:port/db)")
    if port == 0:
        raise ValueError("ledger: the Redis URL's port must be 1-65535")
    if url.path not in ("", "/") and not url.path[1:].isdigit():
        raise ValueError(f"ledger: the Redis URL's path must be a database number such as /0, got {url.path!r}")
    return ledger


def ledger_password(variable: str | None) -> str | None:
    """The Redis password held by the environment variable ``ledger_password_env`` names (``None``: no password).

    Raises:
        ValueError: the variable is not set or is empty (the message names it, never its value).
    """
    if variable is None:
        return None
    password = os.environ.get(variable)
    if not password:
        raise ValueError(
            f"ledger_password_env: the environment variable {variable!r} that should hold the Redis password is "
            f"{'empty' if password == '' else 'not set'}"
        )
    return password


class DeploymentConfig(BaseModel):
    """One deployment the router can send queries to.

    Attributes:
        name: unique deployment name (what the router returns).
        model: model profile whose history outcomes describe this deployment; defaults to ``name``.
        token_budget: tokens (prompt + completion) the deployment may spend per window; ``None`` = unlimited.
        usd_budget: USD the deployment may spend per window; ``None`` = unlimited.
        window: ``"total"`` (never resets) or a duration such as ``"1h"``.
        input_usd_per_mtok: price of a million prompt tokens; without prices, a per-token rate fitted on history's
            costs is used, and a ``usd_budget`` with neither is a start-up error.
        output_usd_per_mtok: price of a million completion tokens.
        fallback: serve queries here when no deployment can afford them (budget is then not enforced).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    model: str = ""
    token_budget: int | None = Field(default=None, ge=0)
    usd_budget: float | None = Field(default=None, ge=0)
    window: str = "total"
    input_usd_per_mtok: float | None = Field(default=None, ge=0)
    output_usd_per_mtok: float | None = Field(default=None, ge=0)
    fallback: bool = False

    @model_validator(mode="after")
    def _default_model(self) -> DeploymentConfig:
        if not self.model:
            self.model = self.name
        return self

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        parse_window(value)
        return value

    @property
    def window_seconds(self) -> float | None:
        """The budget window in seconds (``None``: never resets)."""
        return parse_window(self.window)

    def budget_limits(self) -> dict[str, float]:
        """The enforced limits of this deployment, by unit (``"tokens"``, ``"usd"``)."""
        limits: dict[str, float] = {}
        if self.token_budget is not None:
            limits["tokens"] = float(self.token_budget)
        if self.usd_budget is not None:
            limits["usd"] = float(self.usd_budget)
        return limits


class EstimatorConfig(BaseModel):
    """How neighbours become estimates.

    Attributes:
        k: neighbours averaged per query and outcome (the nearest that recorded it).
        pool: neighbours read per query (at least ``k`` are read); those beyond the k used form the query's region.
        region_weight: pseudo-count pulling the k-neighbour mean toward the region's mean (0 = plain k-NN). The
            default 20 won on the RouterBench benchmark (mean and worst split; 0, 3, 6, 10, 20, 40 tried): five
            neighbours are a noisy sample of 0/1 scores, the region steadies them. Use a smaller value when history
            is so small that the pool spans unrelated queries.
        weighting: ``"uniform"`` (plain mean, as PORT) or ``"similarity"`` (weights grow with cosine similarity).
        temperature: softness of similarity weights: weight = exp(similarity / temperature).
        shrinkage: pseudo-count pulling a neighbour mean toward the model's global mean (0 = none).
        tie_break: weight t of a deterministic per-(query, profile) offset u ∈ [0, 1): quality (1 − t)·d̂ + t·u, so
            that queries with identical neighbours get distinct estimates (0 = off).
        default_completion_tokens: completion-token prior for a model that history has no token counts for.
        cluster_shrinkage: pseudo-records of a model's overall mean added to each cluster's outcomes, so that a
            cluster where an onboarded model answered few profile prompts leans on its overall profile mean.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    k: int = Field(default=5, ge=1, le=200)
    pool: int = Field(default=50, ge=1, le=500)
    region_weight: float = Field(default=20.0, ge=0)
    weighting: Literal["uniform", "similarity"] = "uniform"
    temperature: float = Field(default=0.05, gt=0)
    shrinkage: float = Field(default=0.0, ge=0)
    tie_break: float = Field(default=1e-3, ge=0, le=0.1)
    default_completion_tokens: int = Field(default=256, ge=0)
    cluster_shrinkage: float = Field(default=3.0, ge=0)


class RouterConfig(BaseModel):
    """Everything the router needs; ``RouterConfig.from_yaml(path)`` or ``RouterConfig.model_validate(dict)``.

    Attributes:
        deployments: the deployments to route between (at least one, unique names).
        mode: ``"max_quality"`` maximises quality under the budgets; ``"quality_target"`` minimises cost while the
            mean estimated quality stays at least ``quality_target`` (OmniRouter).
        quality_target: τ in [0, 1], required by ``"quality_target"`` mode.
        cost_unit: what ``"quality_target"`` mode minimises.
        warmup_queries: decisions routed by the budget-paced greedy rule before the first dual solve; the duals are
            re-solved after W, 2W, 4W … decisions and at every budget-window reset.
        expected_queries: expected decisions per budget window (for ``"total"``, over the deployment's life);
            ``None`` estimates it from the arrival rate so far (for ``"total"``: as many again as seen so far).
        data_dir: folder for the embedded Chroma history, the decision log and the SQLite ledger.
        ledger: where budgets are kept: ``"sqlite"`` (``<data_dir>/ledger.sqlite3``, shared by the processes of one
            host) or a ``redis://host:port/db`` / ``rediss://host:port/db`` URL (shared by every router on that
            server and namespace). The URL may name a user but never a password (see ``ledger_password_env``).
        ledger_password_env: name of the environment variable holding the Redis password (read at start; a missing
            or empty variable stops the start, naming it); ``None`` = no password. Only with a Redis ledger.
        ledger_namespace: prefix of the Redis ledger's keys: routers (or LiteLLM model groups) with the same URL
            and namespace share their deployments' budgets, and with another namespace they do not.
        ledger_fallback: what a router does while its Redis ledger cannot be reached: ``"none"`` fails closed
            (nothing is routed or recorded); ``"local"`` enforces budgets per host in
            ``<data_dir>/ledger-fallback.sqlite3`` and replays every settlement into Redis once it is back. Only with
            a Redis ledger.
        ledger_fallback_share: in (0, 1]: the share of each budget's remaining amount (as last read from Redis) one
            host may spend while Redis is down; with N hosts, 1/N keeps the budget. Only with ``ledger_fallback:
            local``.
        chroma_host: use a Chroma server at this host instead of the embedded store (``chroma_port`` beside it).
        collection: Chroma collection name.
        exact_search_max: up to this many history records, neighbours are found by exact search in memory (about
            1.5 KB a record; deterministic, and not misled by many identical vectors as HNSW is); above it, by
            Chroma's approximate HNSW index. 0 = always HNSW.
        embedding_model: sentence-transformers model name or path; ``None`` = the bundled all-MiniLM-L6-v2.
        embedding_backend: what runs the bundled all-MiniLM-L6-v2: ``"torch"`` (sentence-transformers, fp32) or
            ``"onnx-int8"`` (int8 arithmetic on onnxruntime, without ``embedding_model``; the quantized model is
            built on first use into ``$LLM_ROUTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-router``, else
            ``~/.cache/llm-router``). Both give vectors of one space: the int8 ones are within cosine 0.98 of the fp32
            ones, so a history and profile set embedded with either serve the other (README, "Embedding backends",
            for speed and benchmark quality).
        embedding_threads: CPU threads the embedder computes with (torch's for the whole process, or the
            onnxruntime session's). 1 by default: with two threads on a busy host a prompt embedded 11.5 times
            slower than with one; raise it only on cores nothing else uses.
        embedding_keep: which end of a prompt longer than the model's window is embedded: ``"tail"`` (the latest
            message and the question, after any shared system prompt or examples) or ``"head"``.
        embedding_batch_ms: under concurrent load, how long (milliseconds) a query's embedding may wait for others
            to share its forward pass (a lone query never waits; 0 = only queries queued behind a running pass share
            the next one).
        embedding_batch_size: most concurrent query texts embedded in one forward pass; 1 (the default) = every
            query in a pass of its own. Batching pays where a pass has a large fixed cost (a GPU, a remote embedding
            service); MiniLM on a CPU is bound by its arithmetic, and batches of 32 cost more per text than single
            passes (README, Configuration).
        embedding_cache: the SQLite file keeping the embeddings of imported texts, keyed by text and embedding model,
            so that no import embeds a text twice; ``None`` = ``<data_dir>/embeddings.sqlite3``. Data folders may
            share one file.
        reservation_timeout_s: a reservation whose outcome is never recorded (its process crashed mid-call) is
            charged at its reserved amount after this many seconds: the call may have happened. A late record
            replaces that charge by the actual usage; a late failure refunds it.
        reserve_margin: headroom kept for what is estimated. A call reserves its prompt and the high side of its
            completion (the most completion tokens a neighbour used, capped by the request's ``max_tokens``); it is
            admitted only if its deployment's budget has that much left plus this margin on the completion, and on
            the prompt when the caller did not count its tokens. The reservation is replaced by the actual usage when
            recorded. On the RouterBench benchmark (12 runs, head embeddings) 0.5 admitted one call that then cost
            more than the budget it had left, 1.0 none, for 1.2% less quality.
        store_prompts: keep query texts in history and the decision log (off: embeddings only).
        learn_online: add every recorded outcome to history, so estimates improve with traffic.
        history_batch_s: seconds recorded outcomes wait in the decision log to be written to history together (one
            Chroma call per batch instead of one per call: a Chroma server spends about 12 ms of CPU on a one-record
            write and 1.2 ms per record in batches of 64); 0 writes each outcome when it is recorded. Estimates see
            an outcome that much later.
        exploration: share of queries sent to an affordable deployment whose model history holds no quality for
            (not onboarded, no feedback yet), so that it gets traffic to learn from; charged to its budget. 0 = off.
        profile_set: the profile set (``llm-router profile build``) whose cluster centres describe models that few
            neighbours know (models onboarded from profile answers); ``None`` = the one shipped with the package.
        estimator: neighbour and estimate settings.
        metrics: report Prometheus metrics (decisions, refusals, route times, estimate errors, budgets) to
            prometheus_client's default registry (see :mod:`llm_router_plugin.metrics`); off: none.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    deployments: list[DeploymentConfig]
    mode: Literal["max_quality", "quality_target"] = "max_quality"
    quality_target: float | None = Field(default=None, ge=0, le=1)
    cost_unit: Literal["tokens", "usd"] = "tokens"
    warmup_queries: int = Field(default=50, ge=1)
    expected_queries: int | None = Field(default=None, ge=1)
    data_dir: Path = Path(".llm-router")
    ledger: str = "sqlite"
    ledger_password_env: str | None = Field(default=None, min_length=1)
    ledger_namespace: str = Field(default="llm-router", min_length=1)
    ledger_fallback: Literal["none", "local"] = "none"
    ledger_fallback_share: float = Field(default=1.0, gt=0, le=1)
    chroma_host: str | None = None
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    collection: str = Field(default="history", min_length=3)
    exact_search_max: int = Field(default=20_000, ge=0)
    embedding_model: str | None = None
    embedding_backend: Backend = "torch"
    embedding_threads: int = Field(default=1, ge=1)
    embedding_keep: Literal["tail", "head"] = "tail"
    embedding_batch_ms: float = Field(default=2.0, ge=0, le=1000)
    embedding_batch_size: int = Field(default=1, ge=1)
    embedding_cache: Path | None = None
    reservation_timeout_s: float = Field(default=600.0, gt=0)
    reserve_margin: float = Field(default=1.0, ge=0)
    store_prompts: bool = False
    learn_online: bool = True
    history_batch_s: float = Field(default=0.0, ge=0, le=60)
    exploration: float = Field(default=0.02, ge=0, le=1)
    profile_set: Path | None = None
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    metrics: bool = True

    @field_validator("deployments")
    @classmethod
    def _check_deployments(cls, value: list[DeploymentConfig]) -> list[DeploymentConfig]:
        if not value:
            raise ValueError("deployments: the config names no deployments; add at least one")
        names = [d.name for d in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployments: duplicate deployment names {duplicates}")
        return value

    @field_validator("ledger")
    @classmethod
    def _check_ledger(cls, value: str) -> str:
        return validate_ledger(value)

    @field_validator("ledger_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        # The namespace is the keys' Redis hash tag: a brace inside it would move the tag and mix namespaces.
        if "{" in value or "}" in value:
            raise ValueError(f"ledger_namespace: must not contain '{{' or '}}', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> RouterConfig:
        if self.mode == "quality_target" and self.quality_target is None:
            raise ValueError("quality_target: mode 'quality_target' needs quality_target (a number in [0, 1])")
        return self

    @model_validator(mode="after")
    def _check_embedding_backend(self) -> RouterConfig:
        check_backend(self.embedding_model, self.embedding_backend)
        return self

    @model_validator(mode="after")
    def _check_ledger_password(self) -> RouterConfig:
        if self.ledger_password_env is not None:
            if not is_redis_url(self.ledger):
                raise ValueError("ledger_password_env: only a Redis ledger takes a password; set ledger to its URL")
            ledger_password(self.ledger_password_env)
        return self

    @model_validator(mode="after")
    def _check_ledger_fallback(self) -> RouterConfig:
        # Compared with the defaults, not with the fields given: a dumped config (every field set) loads again.
        for field, default in (("ledger_fallback", "none"), ("ledger_fallback_share", 1.0)):
            if getattr(self, field) != default and not is_redis_url(self.ledger):
                raise ValueError(f"{field}: only a Redis ledger has a fallback; set ledger to its URL")
        if self.ledger_fallback_share != 1.0 and self.ledger_fallback != "local":
            raise ValueError("ledger_fallback_share: only used with ledger_fallback: local")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> RouterConfig:
        """Load a config from a YAML file.

        Args:
            path: the YAML file.

        Returns:
            The validated config.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file cannot be read, is not valid YAML (the message names the line), is not a mapping,
                or a field is invalid (the message names the field); every message names the file.
        """
        path = Path(path)
        data = read_yaml(path, "config")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> RouterConfig:
        """Validate a config mapping, turning pydantic's error into a ``ValueError`` that names the field.

        Args:
            data: the mapping (for example parsed YAML).

        Returns:
            The validated config.

        Raises:
            ValueError: ``data`` is not a mapping or a field is invalid.
        """
        if not isinstance(data, dict):
            raise ValueError(f"config must be a mapping with a 'deployments' list, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_problem(cls, err["loc"], err["type"], err["msg"]) for err in exc.errors())
            raise ValueError(f"invalid router config: {problems}") from None

    def deployment(self, name: str) -> DeploymentConfig:
        """Return the deployment called ``name``.

        Raises:
            ValueError: no deployment has that name.
        """
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        known = ", ".join(d.name for d in self.deployments)
        raise ValueError(f"deployment: unknown deployment name {name!r} (known: {known})")

    @property
    def profiles(self) -> list[str]:
        """The distinct model profiles of the deployments, in config order."""
        return list(dict.fromkeys(d.model for d in self.deployments))


def _problem(model: type[BaseModel], loc: tuple[int | str, ...], kind: str, message: str) -> str:
    """One validation error as ``field: message``; an unknown field (a typo, mostly) with the nearest known name."""
    where = ".".join(str(part) for part in loc) or "config"
    if kind != "extra_forbidden":
        return f"{where}: {message}"
    known = _fields_at(model, loc[:-1])
    near = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"{where}: unknown field" + (f" (did you mean {near[0]!r}?)" if near else "")


def _fields_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names of the (nested) model at ``path`` of a validation error's location; list indices skipped."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        nested = [a for a in (*get_args(annotation), annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
