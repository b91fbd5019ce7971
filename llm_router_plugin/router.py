"""The router: per query, pick the deployment with the most estimated quality for the budget it has.

A decision runs in three stages, each its own method:

1. **estimate** — embed the query, read its nearest past queries, estimate every deployment's quality d̂ and
   usage ĝ (tokens: the prompt's tokens plus the estimated completion; USD: prices or recorded cost);
2. **filter** — keep the deployments whose remaining budget in every limited unit covers this query's estimate;
3. **select** — warm-up: budget-paced greedy, max d̂ / max_u(ĝ_u / pace_u) with pace_u = remaining_u / expected
   remaining queries; learned: max d̂ − Σ_u λ_u ĝ_u (or the quality-target rule), λ from the dual LP.

The choice is then reserved in the ledger atomically with a last affordability check. What follows the call
(``record`` settling the reservation with the actual usage and adding the outcome to history, ``feedback``, and the
queues of outcomes an outage left unwritten) is :class:`~llm_router_plugin.outcomes.OutcomeRecorder`'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from llm_router_plugin.budget import UNITS, BudgetLedger, Reservation, Settlement, open_ledger, window_index
from llm_router_plugin.config import DeploymentConfig, RouterConfig
from llm_router_plugin.dataset import DataFile, ImportReport, import_history, read_data
from llm_router_plugin.decisions import DecisionLog
from llm_router_plugin.duals import Budgets, DualSolution, pick, scores, solve_max_quality, solve_quality_target
from llm_router_plugin.embedding import Embedder, Query, embedding_space, estimate_tokens, query_text
from llm_router_plugin.embedding_batch import configured_embedder
from llm_router_plugin.embedding_cache import CachingEmbedder, cache_path
from llm_router_plugin.errors import BudgetExhaustedError, EmptyQueryError, LedgerUnavailableError
from llm_router_plugin.estimator import PRIOR_QUALITY, Estimates, Estimator, KnnEstimator, mean_estimates
from llm_router_plugin.history import FIELDS, STORE_UNREACHABLE, ChromaHistory
from llm_router_plugin.learning import SAMPLE_SIZE, DualState, LearningStore, open_learning_store
from llm_router_plugin.metrics import RouterMetrics, observing
from llm_router_plugin.outcomes import OutcomeRecorder
from llm_router_plugin.pricing import Price, resolve_prices, usage_estimate
from llm_router_plugin.profiles import ProfileSet, load_profile_set
from llm_router_plugin.timing import stage
from llm_router_plugin.validation import optional_token_count, token_count
from llm_router_plugin.vector_pack import PackedEmbedder, shipped_packs

Phase = Literal["warmup", "learned", "explore", "fallback"]

#: Decisions the dual LP is solved on at most (the most recent ones; a Redis sample keeps as many).
MAX_SAMPLE = SAMPLE_SIZE
#: Prompt tokens assumed per image, file or audio part when the caller counted none (a high-detail image is ~765).
NON_TEXT_PART_TOKENS = 1000
#: Seconds between two warnings that the history store is unreachable (one per route would flood the log).
UNREACHABLE_WARN_S = 60.0
#: What a decision's reason says when its estimates come from cached means because the store could not be read.
DEGRADED_REASON = "history unreachable: estimated from each model's cached mean"
_log = logging.getLogger("llm_router_plugin")


class Candidate(BaseModel):
    """One deployment as the router saw it for a query.

    Attributes:
        deployment: deployment name.
        model: its model profile.
        quality: estimated quality d̂.
        tokens: estimated tokens (prompt + completion).
        usd: estimated cost in USD.
        weights: unit → dual weight λ of this deployment's budgets (empty before the first solve).
        score: the selection score of the phase (higher wins; the decision's ``score_formula`` says how it is made).
        affordable: whether it was among the deployments the choice was made from: its remaining budget covers the
            estimate with the reserve margin and, in the warm-up, the estimate is within its pace when any
            deployment's is; once learned (max-quality mode), its score is also ≥ 0.
        remaining: unit → remaining budget before this query (limited units only).
    """

    deployment: str
    model: str
    quality: float
    tokens: float
    usd: float
    weights: dict[str, float] = Field(default_factory=dict)
    score: float
    affordable: bool
    remaining: dict[str, float] = Field(default_factory=dict)


class Decision(BaseModel):
    """Where a query goes, and why.

    Attributes:
        id: pass it to ``record`` and ``feedback``.
        deployment: the chosen deployment.
        model: its model profile.
        phase: ``"warmup"`` (budget-paced greedy), ``"learned"`` (dual weights), ``"explore"`` (the exploration share
            sent to a deployment whose model history has no quality for) or ``"fallback"``.
        reason: one human-readable sentence.
        prompt_tokens: prompt tokens counted (or estimated) for the query.
        reserved: unit → amount reserved on the chosen deployment (a dry run: what a real route would reserve).
        candidates: every candidate deployment, best score first.
        created_at: epoch seconds.
        dry_run: made by ``route(..., dry_run=True)``: nothing was reserved or logged, and ``id`` cannot be recorded.
        score_formula: how the candidates' ``score`` was computed, in words, with its unit.
    """

    id: str
    deployment: str
    model: str
    phase: Phase
    reason: str
    prompt_tokens: int
    reserved: dict[str, float]
    candidates: list[Candidate]
    created_at: float
    dry_run: bool = False
    score_formula: str = ""


class DeploymentStatus(BaseModel):
    """Budget state of one deployment in its current window.

    Attributes:
        name: deployment name.
        model: model profile.
        window: the configured window.
        window_index: which window is current (0 for ``"total"``).
        limits: unit → budget per window.
        spent: unit → settled usage in this window.
        reserved: unit → live reservations in this window.
        remaining: unit → limit − spent − reserved (limited units only).
        weights: unit → dual weight λ.
        fallback: whether it serves queries no deployment can afford.
    """

    name: str
    model: str
    window: str
    window_index: int
    limits: dict[str, float]
    spent: dict[str, float]
    reserved: dict[str, float]
    remaining: dict[str, float]
    weights: dict[str, float]
    fallback: bool


class RouterStatus(BaseModel):
    """A snapshot of the router.

    Attributes:
        phase: ``"warmup"`` until the first dual solve, then ``"learned"``.
        mode: the configured mode.
        decisions: decisions made so far.
        next_solve_at: the decision count that triggers the next re-solve.
        history_size: records in the history store; ``None`` while it cannot be reached.
        history_pending: outcomes (or feedback scores) whose history write failed while the store could not be
            reached: queued in the decision log, and written, oldest first, once it is back.
        unsettled: outcomes reported while the budget ledger could not be reached: queued in the decision log, and
            settled, oldest first, once it is back (their holds count against the budget meanwhile).
        mu: quality multiplier (quality-target mode).
        solve_notes: what the last solve reported (e.g. an unreachable quality target).
        unknown_models: models of deployments that history holds no quality for: they are routed on the prior until
            onboarded (``llm-router profile run``, then ``llm-router onboard``) or scored by feedback.
        deployments: per-deployment budget state.
    """

    phase: Literal["warmup", "learned"]
    mode: str
    decisions: int
    next_solve_at: int
    history_size: int | None
    history_pending: int
    unsettled: int
    mu: float
    solve_notes: list[str]
    unknown_models: list[str]
    deployments: list[DeploymentStatus]


class _Budget:
    """One limited unit of one deployment: a row of the LP."""

    __slots__ = ("deployment", "index", "limit", "unit")

    def __init__(self, index: int, deployment: DeploymentConfig, unit: str, limit: float) -> None:
        self.index = index
        self.deployment = deployment
        self.unit = unit
        self.limit = limit


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated query, before anything is written: its text (``""``: none), prompt tokens and limits."""

    text: str
    prompt_tokens: int
    counted: bool
    max_tokens: int | None
    choices: int
    allowed: list[int]
    #: Decide only: reserve, log and count nothing (see ``Router.route``).
    dry_run: bool = False
    #: The history store could not be read: estimates come from cached means (or the priors).
    degraded: bool = False


class Router:
    """Routes queries between deployments under per-deployment budgets.

    Args:
        config: deployments, budgets and knobs.
        embedder: overrides the embedder the config names.
        history: overrides the Chroma store the config names.
        ledger: overrides the ledger the config names (``config.ledger``: SQLite in ``config.data_dir`` or Redis).
        decisions: overrides the decision log in ``config.data_dir``.
        learning: overrides the shared decision count, LP sample and solve lease (the decision log with a SQLite
            ledger; the Redis namespace with a Redis ledger).
        profile_set: overrides the profile set the config names.
        estimator: overrides the k-NN estimator built from the history and the profile set's centres.
        clock: epoch-seconds clock (tests and replays pass their own).
        ledger_password: the Redis password of the ledger and the shared learning state when it does not come from
            ``ledger_password_env`` (the LiteLLM proxy's ``router_settings.redis_password``); never part of the config.
        metrics: where to report Prometheus metrics (:class:`~llm_router_plugin.metrics.RouterMetrics`: a registry
            and a group label); ``None`` = group ``"default"`` on prometheus_client's default registry, unless the
            config says ``metrics: false``.

    Example:
        >>> router = Router.from_config("router.yaml")  # doctest: +SKIP
        >>> decision = router.route("Summarise this contract ...")  # doctest: +SKIP
        >>> router.record(decision.id, prompt_tokens=812, completion_tokens=164)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        embedder: Embedder | None = None,
        history: ChromaHistory | None = None,
        ledger: BudgetLedger | None = None,
        decisions: DecisionLog | None = None,
        learning: LearningStore | None = None,
        profile_set: ProfileSet | None = None,
        estimator: Estimator | None = None,
        clock: Callable[[], float] = time.time,
        ledger_password: str | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None or not config.metrics else RouterMetrics()
        self.embedder = embedder or configured_embedder(config)
        data_dir = Path(config.data_dir)
        self.history = history or ChromaHistory.from_config(config)
        self.ledger: BudgetLedger = ledger or open_ledger(config, password=ledger_password)
        self.decisions = decisions or DecisionLog(data_dir / "ledger.sqlite3")
        self.learning: LearningStore = learning or open_learning_store(config, self.decisions,
                                                                       password=ledger_password)
        if profile_set is None:
            profile_set = load_profile_set(config.profile_set)
        if embedding_space(profile_set.embedding_model) != embedding_space(self.embedder.name):
            _log.warning("profile set built with embedder %s, the router uses %s: its cluster centres are recomputed "
                         "from its %d prompts (llm-router profile build stores them)", profile_set.embedding_model,
                         self.embedder.name, len(profile_set.prompts))
        self.profile_set = profile_set.for_embedder(self.embedder)
        self.estimator: Estimator = estimator or KnnEstimator(self.history, config.estimator, self.profile_set.centres)
        self._clock = clock
        self._deployments = list(config.deployments)
        self._profiles = config.profiles
        self._column = [self._profiles.index(d.model) for d in self._deployments]
        self._budgets = [
            _Budget(i, d, unit, limit)
            for i, d in enumerate(self._deployments)
            for unit, limit in d.budget_limits().items()
        ]
        self._owner = np.array([b.index for b in self._budgets], dtype=int)
        self._prices = resolve_prices(self._deployments, self._history_means)
        self._solve_lock = threading.Lock()
        self._warned: set[str] = set()
        self._unreachable_warned_at = -math.inf
        self._learning_warned_at = -math.inf
        self._known_count = 0
        self._first_time: float | None = None
        self.duals = DualState(self.ledger, self.learning, config.warmup_queries)
        self.outcomes = OutcomeRecorder(
            config, ledger=self.ledger, decisions=self.decisions, history=self.history, learning=self.learning,
            prices={d.name: p for d, p in zip(self._deployments, self._prices, strict=True)}, clock=clock,
            warn_learning=self._warn_learning, metrics=self.metrics,
        )
        if self.metrics is not None:
            self.metrics.watch(self)

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any] | RouterConfig, **kwargs: Any) -> Router:
        """Build a router from a YAML path, a mapping or a :class:`RouterConfig`.

        Args:
            source: the config.
            **kwargs: passed to :class:`Router` (``embedder``, ``history``, ``ledger``, ``clock`` …).

        Returns:
            The router.

        Raises:
            ValueError: the config is invalid (the message names the field).
        """
        if isinstance(source, RouterConfig):
            config = source
        elif isinstance(source, dict):
            config = RouterConfig.from_dict(source)
        else:
            config = RouterConfig.from_yaml(source)
        return cls(config, **kwargs)

    # ----------------------------------------------------------------------------------------------- routing

    def route(
        self, query: Query, *, prompt_tokens: int | None = None, max_tokens: int | None = None, n: int = 1,
        deployments: Sequence[str] | None = None, dry_run: bool = False,
    ) -> Decision:
        """Choose a deployment for a query and reserve its estimated usage.

        A chat query without text (an image, a file, an empty turn) is routed on each model's mean over history,
        and its reason says so; pass ``prompt_tokens`` for it (else each non-text part counts as
        :data:`NON_TEXT_PART_TOKENS`).

        A dry run (``dry_run=True``, what ``llm-router route`` does) makes the decision the next query would get
        and writes nothing: no reservation, no decision log entry, no count toward the decision count that paces
        budgets and schedules re-solves, no arrival time; queued outcomes are left for the next real route, and a
        re-solve that is due too (the dry run decides with the weights in force). Any number of dry runs leaves the
        following decisions as they would have been. Its ``id`` is not known to :meth:`record` or :meth:`feedback`.

        Args:
            query: prompt text or OpenAI-style chat messages.
            prompt_tokens: exact prompt tokens if the caller counted them (held exactly); else about four characters
                a token, held with the reserve margin.
            max_tokens: the request's completion limit: caps the completion part of the estimate and the hold.
            n: completions the request asks for (OpenAI's ``n``): the completion part is estimated and held n times.
            deployments: restrict the choice to these deployments (e.g. the healthy ones); ``None`` = all.
            dry_run: decide only, reserving, logging and counting nothing (see above).

        Returns:
            The decision; pass ``decision.id`` to :meth:`record` when the call ends (not for a dry run).

        Raises:
            EmptyQueryError: the query is an empty string or an empty message list.
            ValueError: ``prompt_tokens``, ``max_tokens`` or ``n`` is not a valid count, or ``deployments`` names an
                unknown deployment or is empty (nothing is reserved or logged then).
            BudgetExhaustedError: no allowed deployment can afford the query (or, once learned, is worth its
                budget for it) and none is a fallback.
            LedgerUnavailableError: the budget ledger (a Redis server) cannot be reached: no deployment is served,
                with a budget or without, since none may be served without a hold (fails closed).
        """
        # A dry run is not traffic: the metrics do not see it either.
        with observing(None if dry_run else self.metrics) as routed:
            request = self._request(query, prompt_tokens, max_tokens, n, deployments, dry_run)
            with stage("embedding"):
                embedding = self.embedder.embed([request.text])[0] if request.text else None
            return routed(self._decide(request, embedding))

    async def aroute(
        self, query: Query, *, prompt_tokens: int | None = None, max_tokens: int | None = None, n: int = 1,
        deployments: Sequence[str] | None = None, dry_run: bool = False,
    ) -> Decision:
        """Async :meth:`route`: embedding, store and ledger work run off the event loop."""
        with observing(None if dry_run else self.metrics) as routed:
            request = self._request(query, prompt_tokens, max_tokens, n, deployments, dry_run)
            embedding = (await self.embedder.aembed([request.text]))[0] if request.text else None
            return routed(await asyncio.to_thread(self._decide, request, embedding))

    def _request(self, query: Query, prompt_tokens: Any, max_tokens: Any, n: Any, deployments: Sequence[str] | None,
                 dry_run: bool) -> _Request:
        counted = optional_token_count("prompt_tokens", prompt_tokens)
        limit = optional_token_count("max_tokens", max_tokens)
        if limit == 0:
            raise ValueError("max_tokens: must be at least 1")
        choices = token_count("n", n)
        if choices == 0:
            raise ValueError("n: must be at least 1")
        text = query_text(query)
        if not text.strip():
            if isinstance(query, str) or not query:
                raise EmptyQueryError("query: the query has no text and no messages to route on")
            text = ""  # chat turns without text (images, files, empty turns): routed on the models' means
        if counted is not None:
            tokens = counted
        elif text:
            tokens = estimate_tokens(text)
        else:
            tokens = NON_TEXT_PART_TOKENS * max(1, _non_text_parts(query))
        return _Request(text, tokens, counted is not None, limit, choices, self._allowed(deployments), dry_run)

    def _allowed(self, deployments: Sequence[str] | None) -> list[int]:
        if deployments is None:
            return list(range(len(self._deployments)))
        names = [d.name for d in self._deployments]
        unknown = [n for n in deployments if n not in names]
        if unknown:
            raise ValueError(f"deployments: unknown deployment names {unknown} (known: {names})")
        if not deployments:
            raise ValueError("deployments: an empty list leaves nothing to route to")
        return sorted({names.index(n) for n in deployments})

    def _decide(self, request: _Request, embedding: np.ndarray | None) -> Decision:
        with stage("decide"):  # here, not in route(): aroute() decides in a worker thread
            return self._choose(request, embedding)

    def _choose(self, request: _Request, embedding: np.ndarray | None) -> Decision:
        # First: a store that is back serves this query with the outcomes queued, and a ledger that is back counts
        # the spend reported while it was away.
        if not request.dry_run:
            self.outcomes.retry_queued()
        now = self._clock()
        priced_out = False
        degraded = False
        if embedding is None:
            try:
                estimates = self.estimator.estimate_without_text(self._profiles)
            except STORE_UNREACHABLE as exc:
                estimates, degraded = self._estimate_degraded(exc), True
            embedding = np.zeros(0, dtype=np.float32)  # logged as such: it never joins history
        else:
            self._check_dimension(embedding)
            try:
                with stage("estimate"):
                    estimates = self.estimator.estimate(embedding[None, :], self._profiles)
            except STORE_UNREACHABLE as exc:
                estimates, degraded = self._estimate_degraded(exc), True
        if degraded:
            request = replace(request, degraded=True)
        quality, usage = self._deployment_estimates(estimates, request)
        count = self._count()
        if not request.dry_run:
            self._maybe_solve(now, count)
        remaining = self._remaining(now)
        allowed = request.allowed
        affordable = [i for i in allowed if self._covers(remaining[i], self._needed(usage[i]))]
        phase: Phase = "learned" if self._learned else "warmup"
        pace = self._pace(remaining, now, count) if phase == "warmup" else None
        score = self._scores(quality, usage, pace)
        explore = self._explore(affordable, count)
        if explore is not None:
            decision_id = uuid.uuid4().hex
            if request.dry_run or self._reserve(decision_id, explore, usage[explore], now, enforce=True):
                return self._finish(decision_id, explore, "explore", request, embedding, quality, usage, score,
                                    remaining, affordable, now)
            affordable = [i for i in affordable if i != explore]  # taken meanwhile: choose among the others
        if pace is not None:
            # Before any price is learned, prefer deployments within the pace (budget left per query still
            # expected); warm-up queries are real users, so when none is within pace the best affordable one serves.
            affordable = [i for i in affordable if all(usage[i][u] <= pace[i][u] for u in pace[i])] or affordable
        elif phase == "learned" and self.config.mode == "max_quality":
            # As in the LP, serve a query only where its estimated quality covers the price λ·ĝ of the budget it
            # would use (score ≥ 0); below that, the budget is worth more to the queries still expected.
            valued = [i for i in affordable if score[i] >= 0]
            priced_out = bool(affordable) and not valued
            affordable = valued
        share = self._budget_share(usage)
        for _ in range(len(affordable)):
            if not affordable:
                break
            best = pick(score, share, affordable)
            decision_id = uuid.uuid4().hex
            if request.dry_run or self._reserve(decision_id, best, usage[best], now, enforce=True):
                return self._finish(decision_id, best, phase, request, embedding, quality, usage, score,
                                    remaining, affordable, now)
            affordable.remove(best)  # another request took the budget between the check and the hold
        return self._fallback(request, embedding, quality, usage, score, remaining, now, priced_out=priced_out)

    def _estimate_degraded(self, exc: Exception) -> Estimates:
        """Estimates while the history store cannot be read: each model's cached mean, else the priors.

        Routing must go on through a store outage (a Chroma server that went away); budgets are enforced by the
        ledger, which does not depend on the store, so estimates from the means only cost routing precision.
        """
        now = time.monotonic()
        if now - self._unreachable_warned_at >= UNREACHABLE_WARN_S:
            self._unreachable_warned_at = now
            _log.warning("%s (%s); routing goes on, budgets are enforced by the ledger", DEGRADED_REASON, exc)
        # The store serves its means from memory once scanned: no round trip to the store then.
        return mean_estimates(self._history_means(self._profiles), self._profiles, self.config.estimator)

    def _history_means(self, profiles: list[str]) -> np.ndarray:
        """Each profile's mean outcome over history; all NaN (the priors stand) while the store cannot be read and
        never was (a Chroma server not up yet)."""
        try:
            return self.history.profile_means(profiles)
        except STORE_UNREACHABLE:
            return np.full((len(profiles), len(FIELDS)), np.nan)

    def _check_dimension(self, embedding: np.ndarray) -> None:
        """A profile set from another embedding space fails every query: say so (checked here, not at start, so that
        building a router does not load the embedding model)."""
        width = self.profile_set.centres.shape[1]
        if embedding.shape[-1] != width:
            raise ValueError(f"profile_set: its centres have dimension {width}, the embedder {self.embedder.name} "
                             f"makes {embedding.shape[-1]}; rebuild it with llm-router profile build")

    def _explore(self, affordable: list[int], count: int) -> int | None:
        """Every ⌈1 / exploration⌉-th decision, an affordable deployment whose model has no quality in history.

        A model nothing is known about learns only from traffic, so a small share goes to it, budget permitting.
        The schedule is by decision count, not chance, so a replay decides the same way every time.
        """
        if self.config.exploration <= 0:
            return None
        period = math.ceil(1.0 / max(self.config.exploration, 1e-9))  # a denormal share would overflow
        number = count + 1  # this decision's
        if number % period:
            return None  # most decisions: nothing more to look at
        unknown = set(self.unknown_models())
        candidates = [i for i in affordable if self._deployments[i].model in unknown]
        return candidates[(number // period) % len(candidates)] if candidates else None

    def _fallback(
        self, request: _Request, embedding: np.ndarray, quality: np.ndarray, usage: list[dict[str, float]],
        score: np.ndarray, remaining: list[dict[str, float]], now: float, *, priced_out: bool,
    ) -> Decision:
        fallbacks = [i for i in request.allowed if self._deployments[i].fallback]
        if not fallbacks:
            # A refused query is traffic all the same: logged, it counts toward the volume and the LP's sample.
            if not request.dry_run:
                self._log_decision(uuid.uuid4().hex, "", "", "declined", embedding, None,
                                   self._logged_estimates(quality, usage), now)
            raise BudgetExhaustedError({self._deployments[i].name: remaining[i] for i in request.allowed},
                                       priced_out=priced_out)
        best = max(fallbacks, key=lambda i: quality[i])
        decision_id = uuid.uuid4().hex
        if not request.dry_run:
            self._reserve(decision_id, best, usage[best], now, enforce=False)
        return self._finish(decision_id, best, "fallback", request, embedding, quality, usage, score, remaining, [],
                            now)

    def _deployment_estimates(self, estimates: Estimates, request: _Request
                              ) -> tuple[np.ndarray, list[dict[str, float]]]:
        quality = estimates.quality[0, self._column]
        usage = [
            usage_estimate(
                price, request.prompt_tokens, request.counted, float(estimates.completion_tokens[0, col]),
                float(estimates.completion_tokens_high[0, col]), self.config.reserve_margin, request.max_tokens,
                request.choices,
            )
            for price, col in zip(self._prices, self._column, strict=True)
        ]
        return quality, usage

    @staticmethod
    def _held(usage: dict[str, float]) -> dict[str, float]:
        """What to reserve for an estimate (see :func:`~llm_router_plugin.pricing.usage_estimate`)."""
        return {u: max(0.0, usage[f"{u}_hold"]) for u in UNITS}

    @staticmethod
    def _needed(usage: dict[str, float]) -> dict[str, float]:
        """The headroom a budget must have left to admit an estimate (the hold and the margin)."""
        return {u: max(0.0, usage[f"{u}_need"]) for u in UNITS}

    def _budget_share(self, usage: list[dict[str, float]]) -> np.ndarray:
        """Per deployment, the largest fraction of one of its budgets this query would use (0 if unlimited)."""
        share = np.zeros(len(self._deployments))
        for b in self._budgets:
            fraction = usage[b.index][b.unit] / b.limit if b.limit > 0 else np.inf
            share[b.index] = max(share[b.index], fraction)
        return share

    @staticmethod
    def _covers(remaining: dict[str, float], usage: dict[str, float]) -> bool:
        return all(usage[unit] <= left for unit, left in remaining.items())

    def _scores(
        self, quality: np.ndarray, usage: list[dict[str, float]], pace: list[dict[str, float]] | None
    ) -> np.ndarray:
        """Selection scores: budget-paced greedy while warming up (``pace`` given), else the learned dual rule."""
        if pace is not None:
            ratio = np.array([
                max((usage[i][u] / pace[i][u] if pace[i][u] > 0 else np.inf) for u in pace[i]) if pace[i] else 0.0
                for i in range(len(self._deployments))
            ])
            # A deployment without limits costs no budget: it wins by quality alone.
            return quality / np.maximum(ratio, 1e-12)
        g = np.array([[usage[b.index][b.unit] for b in self._budgets]])
        solution = self._solution()
        cost = None
        if self.config.mode == "quality_target" and solution.feasible:
            cost = np.array([[u[self.config.cost_unit] for u in usage]])
        return scores(quality[None, :], g, self._owner, solution, cost)[0]

    def _score_formula(self) -> str:
        """What :meth:`_scores` computes in the current phase, in words, for a decision's ``score_formula``."""
        if not self._learned:
            return ("warm-up (budget-paced greedy): quality ÷ max over the deployment's budgets of (estimated usage ÷ "
                    "pace), pace = remaining budget ÷ queries still expected in its window; a ratio, unitless; "
                    "a deployment without budgets scores quality × 1e12")
        if self.config.mode == "quality_target" and self._solution().feasible:
            unit = self.config.cost_unit
            return (f"learned duals, quality target: μ·quality − cost − Σ over the deployment's budgets of λ × "
                    f"estimated usage, μ = {self.duals.mu:.4g}, cost in {unit} (λ: the candidate's weights, per token "
                    f"or per USD); in {unit}, the negated cost of the query")
        return ("learned duals: quality − Σ over the deployment's budgets of λ × estimated usage (λ: the candidate's "
                "weights, quality per token or per USD); in quality units; below 0 the budget is worth more to the "
                "queries still expected")

    # ----------------------------------------------------------------------------------------------- budgets

    def _window(self, deployment: DeploymentConfig, now: float) -> int:
        return window_index(self.ledger.anchor, deployment.window_seconds, now)

    def _remaining(self, now: float) -> list[dict[str, float]]:
        limited = [d for d in self._deployments if d.budget_limits()]
        # One round trip for all of them: on a Redis ledger, one per deployment would dominate the route.
        with stage("ledger"):
            usages = dict(zip(
                (d.name for d in limited),
                self.ledger.usages([(d.name, self._window(d, now)) for d in limited], now), strict=True,
            ))
        out: list[dict[str, float]] = []
        for deployment in self._deployments:
            if deployment.name not in usages:
                out.append({})
                continue
            spent, held = usages[deployment.name]
            out.append({u: limit - spent[u] - held[u] for u, limit in deployment.budget_limits().items()})
        return out

    def _reserve(self, decision_id: str, index: int, usage: dict[str, float], now: float, enforce: bool) -> bool:
        deployment = self._deployments[index]
        reservation = Reservation(
            decision_id=decision_id,
            deployment=deployment.name,
            window=self._window(deployment, now),
            amounts=self._held(usage),
            limits=deployment.budget_limits() if enforce else {},
            required=self._needed(usage),
            expires_at=now + self.config.reservation_timeout_s,
        )
        with stage("ledger"):
            return self.ledger.try_reserve(reservation, now)

    def _expected_remaining(self, deployment: DeploymentConfig, now: float, seen: int) -> float:
        """Queries still expected in the deployment's current window (at least 1), ``seen`` decisions so far."""
        window = deployment.window_seconds
        if window is None:
            if self.config.expected_queries is not None:
                return float(max(1, self.config.expected_queries - seen))
            # Volume unknown: assume as many queries are still to come as have come (at least a warm-up's worth).
            return float(max(seen, self.config.warmup_queries))
        start = self.ledger.anchor + self._window(deployment, now) * window
        left = max(0.0, start + window - now) / window
        if self.config.expected_queries is not None:
            return max(1.0, self.config.expected_queries * left)
        first = self._first_decision_time()
        elapsed = now - first if first is not None else 0.0
        rate = seen / elapsed if elapsed > 0 else float(self.config.warmup_queries) / window
        return max(1.0, rate * window * left)

    def _pace(self, remaining: list[dict[str, float]], now: float, seen: int) -> list[dict[str, float]]:
        pace = []
        for i, deployment in enumerate(self._deployments):
            expected = self._expected_remaining(deployment, now, seen) if remaining[i] else 1.0
            pace.append({u: max(0.0, left) / expected for u, left in remaining[i].items()})
        return pace

    # ----------------------------------------------------------------------------------------------- duals

    @property
    def _learned(self) -> bool:
        return self.duals.learned

    def _solution(self) -> DualSolution:
        return self.duals.solution([(b.deployment.name, b.unit) for b in self._budgets])

    def _window_key(self, now: float) -> list[int]:
        return [self._window(d, now) for d in self._deployments]

    def _maybe_solve(self, now: float, count: int) -> None:
        """Re-solve when the shared decision count reaches the next solve or a window reset, one router at a time.

        Learning state that cannot be read (its Redis went away) leaves the current weights in use: weights only
        steer the choice, the ledger enforces the budgets.
        """
        window_key = self._window_key(now)
        try:
            if not self.duals.due(count, window_key):
                return
            with self._solve_lock, self.duals.solving(self._count, window_key) as solve:
                if solve:
                    self.resolve(now)
        except LedgerUnavailableError as exc:
            self._warn_learning(exc)

    def _count(self) -> int:
        """Decisions made by every router sharing the learning store (the last count read, if it cannot be read)."""
        try:
            self._known_count = self.learning.count()
        except LedgerUnavailableError as exc:
            self._warn_learning(exc)
        return self._known_count

    def _first_decision_time(self) -> float | None:
        if self._first_time is None:  # set once, by the first decision: read until there is one
            try:
                self._first_time = self.learning.first_time()
            except LedgerUnavailableError as exc:
                self._warn_learning(exc)
        return self._first_time

    def _warn_learning(self, exc: LedgerUnavailableError) -> None:
        now = time.monotonic()
        if now - self._learning_warned_at >= UNREACHABLE_WARN_S:
            self._learning_warned_at = now
            _log.warning("shared learning state unreachable (%s): routing goes on with the last decision count and "
                         "weights read; budgets stay with the ledger", exc)

    def resolve(self, now: float | None = None) -> DualSolution:
        """Re-solve the dual weights now, on the recent decisions, with remaining budget over remaining volume.

        Called automatically after W, 2W, 4W … decisions (of every router sharing the ledger) and when a budget
        window resets, by one router at a time; the others use the weights it publishes.

        Args:
            now: the clock.

        Returns:
            The new weights (also published through the ledger to every router sharing it).

        Raises:
            LedgerUnavailableError: the ledger or the learning store cannot be reached.
        """
        now = self._clock() if now is None else now
        sample, skipped = self._sample()
        count = self.learning.count()
        remaining = self._remaining(now)
        amounts = np.array([
            max(0.0, remaining[b.index][b.unit]) * len(sample) / self._expected_remaining(b.deployment, now, count)
            for b in self._budgets
        ])
        quality = np.array([[row[d.name]["quality"] for d in self._deployments] for row in sample]).reshape(
            len(sample), len(self._deployments)
        )
        usage = np.array([[row[b.deployment.name][b.unit] for b in self._budgets] for row in sample]).reshape(
            len(sample), len(self._budgets)
        )
        budgets = Budgets(self._owner, amounts)
        if self.config.mode == "quality_target":
            cost = np.array([[row[d.name][self.config.cost_unit] for d in self._deployments] for row in sample])
            solution = solve_quality_target(
                quality, usage, budgets, cost.reshape(quality.shape), float(self.config.quality_target or 0.0)
            )
        else:
            solution = solve_max_quality(quality, usage, budgets)
        lambdas: dict[str, dict[str, float]] = {}
        for b, value in zip(self._budgets, solution.lambdas, strict=True):
            lambdas.setdefault(b.deployment.name, {})[b.unit] = float(value) if np.isfinite(value) else 1e300
        notes = list(solution.notes)
        if skipped:
            notes.append(f"skipped {skipped} logged decision(s) whose estimates are not finite, non-negative numbers")
            _log.warning("dual solve: %s", notes[-1])
        self.duals.publish({
            "lambdas": lambdas,
            "mu": solution.mu,
            "feasible": solution.feasible,
            "notes": notes,
            "solved_at": count,
            "next_solve_at": max(2 * count, self.config.warmup_queries),
            "window_key": self._window_key(now),
            "sample_size": len(sample),
        })
        return solution

    def _sample(self) -> tuple[list[dict[str, dict[str, float]]], int]:
        """The recent decisions' estimates the LP is solved on, and how many were skipped as unusable."""
        names = {d.name for d in self._deployments}
        keys = ("quality", *UNITS)
        # Rows logged under another set of deployments (the config changed) cannot join the LP.
        rows = [row for row in self.learning.recent(MAX_SAMPLE) if names <= row.keys()]
        # One non-finite or negative number (an older version's bug, a hand-edited log) would make every solve, and
        # so every later route, fail: such rows are left out.
        usable = [row for row in rows if all(
            isinstance(value := row[name].get(key, 0.0), int | float) and math.isfinite(value) and value >= 0
            for name in names for key in keys
        )]
        return usable, len(rows) - len(usable)

    # ----------------------------------------------------------------------------------------------- finishing

    def _finish(
        self, decision_id: str, chosen: int, phase: Phase, request: _Request, embedding: np.ndarray,
        quality: np.ndarray, usage: list[dict[str, float]], score: np.ndarray, remaining: list[dict[str, float]],
        affordable: list[int], now: float,
    ) -> Decision:
        weights = self.duals.lambdas
        candidates = [
            Candidate(
                deployment=d.name, model=d.model, quality=float(quality[i]), tokens=usage[i]["tokens"],
                usd=usage[i]["usd"], weights=dict(weights.get(d.name, {})),
                score=float(score[i]) if np.isfinite(score[i]) else -1e300,
                affordable=i in affordable, remaining=remaining[i],
            )
            for i, d in enumerate(self._deployments)
        ]
        candidates.sort(key=lambda c: c.score, reverse=True)
        chosen_dep = self._deployments[chosen]
        formula = self._score_formula()  # before this decision's log entry can complete the warm-up
        if not request.dry_run:
            count = self._log_decision(
                decision_id, chosen_dep.name, chosen_dep.model, phase, embedding,
                request.text if self.config.store_prompts and request.text else None,
                self._logged_estimates(quality, usage), now,
            )
            self._maybe_solve(now, count)  # this decision may complete the warm-up or a doubling step
        reason = self._reason(phase, chosen_dep, quality[chosen], score[chosen], len(affordable))
        if request.degraded:
            reason = f"{DEGRADED_REASON}; {reason}"
        elif not request.text:
            reason = f"no text to route on, so every model is estimated by its mean over history; {reason}"
        if chosen_dep.model in self.unknown_models():
            reason += (f"; history has no quality for model {chosen_dep.model}, so it is estimated at the prior "
                       f"{PRIOR_QUALITY} (onboard it: llm-router profile run, then llm-router onboard)")
        return Decision(
            id=decision_id, deployment=chosen_dep.name, model=chosen_dep.model, phase=phase, reason=reason,
            prompt_tokens=request.prompt_tokens, reserved=self._held(usage[chosen]),
            candidates=candidates, created_at=now, dry_run=request.dry_run, score_formula=formula,
        )

    def _log_decision(self, decision_id: str, deployment: str, profile: str, phase: str, embedding: np.ndarray,
                      text: str | None, estimates: dict[str, dict[str, float]], now: float) -> int:
        """Log a decision here and count it in the shared learning state; the shared decision count."""
        with stage("log"):
            self.decisions.add(decision_id, deployment, profile, phase, embedding, text, estimates, created_at=now)
            try:
                self._known_count = self.learning.add(decision_id, profile, estimates, now)
            except LedgerUnavailableError as exc:  # the decision is logged and its budget held: it must be served
                self._warn_learning(exc)
                self._known_count += 1
        return self._known_count

    def _logged_estimates(self, quality: np.ndarray, usage: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {d.name: {"quality": float(quality[i]), **usage[i]} for i, d in enumerate(self._deployments)}

    def _reason(self, phase: Phase, deployment: DeploymentConfig, quality: float, score: float, n: int) -> str:
        if phase == "explore":
            return (f"exploration ({self.config.exploration:.0%} of queries): {deployment.name} serves a model history "
                    f"has no quality for, so that traffic and feedback can teach the router about it")
        if phase == "fallback":
            return (f"no deployment could afford the query (or was worth its budget for it); sent to fallback "
                    f"{deployment.name} (budget not enforced)")
        rule = "budget-paced greedy (warm-up)" if phase == "warmup" else "max quality − λ·cost (learned duals)"
        if phase == "learned" and self.config.mode == "quality_target":
            rule = f"min cost − μ·quality for mean quality ≥ {self.config.quality_target} (learned duals)"
        return f"{rule}: best of {n} affordable deployment(s), est. quality {quality:.3f}, score {score:.4g}"

    # ----------------------------------------------------------------------------------------------- outcomes

    def record(
        self,
        decision_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None = None,
        latency_s: float | None = None,
        error: str | None = None,
        quality: float | None = None,
        ttft_s: float | None = None,
    ) -> Settlement | None:
        """Settle a decision with its actual usage and add the outcome to history.

        Every argument is checked before anything is written. The ledger is settled first and the decision closed
        second, each at most once, so a record interrupted between the two (a crash, a full disk) is completed by
        calling it again, and charges once. A failed call (``error`` set) that reports no tokens releases its
        reservation and adds nothing to history; usage recorded for it later is still charged (the call was answered
        after all). A history store that cannot be reached after the ledger was settled is logged, not raised: the
        spend is kept, and the outcome is queued in the decision log and written to history once the store is back.

        Args:
            decision_id: from :meth:`route`.
            prompt_tokens: actual prompt tokens (a whole number ≥ 0).
            completion_tokens: actual completion tokens (a whole number ≥ 0).
            cost_usd: actual cost; ``None`` = the tokens at the deployment's price, else the decision's estimate.
            latency_s: call latency, kept in the decision log.
            error: the error message of a failed call.
            quality: a quality score in [0, 1] if already known (else use :meth:`feedback`, before or after this
                call); ``None`` keeps a score :meth:`feedback` gave before this call.
            ttft_s: time to first token of a streamed call, kept in the decision log.

        Returns:
            The settlement, or ``None`` if the decision was already recorded or the call failed without usage.
            A settlement completed by a retry has empty ``reserved`` amounts.

        Raises:
            UnknownDecisionError: no such decision.
            ValueError: a token count that is not a whole number ≥ 0, a cost or time that is negative or not finite,
                or a quality outside [0, 1] (the message names the argument; nothing is written).
            LedgerUnavailableError: the budget ledger (a Redis server) cannot be reached: the decision stays open,
                and calling again once the ledger is back settles it (charged once).
        """
        return self.outcomes.record(decision_id, prompt_tokens, completion_tokens, cost_usd, latency_s, error,
                                    quality, ttft_s)

    async def arecord(self, decision_id: str, prompt_tokens: int, completion_tokens: int, cost_usd: float | None = None,
                      latency_s: float | None = None, error: str | None = None,
                      quality: float | None = None, ttft_s: float | None = None) -> Settlement | None:
        """Async :meth:`record` (runs in a worker thread)."""
        return await asyncio.to_thread(
            self.record, decision_id, prompt_tokens, completion_tokens, cost_usd, latency_s, error, quality, ttft_s
        )

    def feedback(self, decision_id: str, quality: float) -> None:
        """Attach a quality score (e.g. a thumbs-up as 1.0) to a decision's outcome, in the log and in history.

        A score given before the decision is recorded (a client may rate an answer before the call's usage
        arrives) is kept in the decision log and learned when :meth:`record` closes the decision. A later score
        replaces an earlier one. A decision routed without text never joins history: its score is kept in the log.
        A score the history store cannot take now (unreachable) is queued with the decision and written once it is back.
        With a Redis ledger, a decision another router on the namespace made (a proxy host behind the same load
        balancer) is scored too: in the shared history, and for that router's :meth:`record` if it has not run yet.

        Args:
            decision_id: from :meth:`route`.
            quality: score in [0, 1].

        Raises:
            UnknownDecisionError: no such decision, here or (Redis ledger) on another router of the namespace in the
                last day.
            ValueError: quality outside [0, 1] (or not a number), or the decision's call failed without an answer
                to score (the message names the argument; nothing is written).
            LedgerUnavailableError: the decision is not this router's and the shared learning state cannot be read.
        """
        self.outcomes.feedback(decision_id, quality)

    def open_decisions(self) -> dict[str, int]:
        """Per deployment, this router's logged decisions whose outcome is not recorded and whose hold is live.

        A decision older than ``reservation_timeout_s`` (by this router's clock) has had its hold charged: it holds
        nothing any more and is not counted.

        Returns:
            Deployment name → open decisions (deployments without any are absent).
        """
        return self.decisions.open_counts(self._clock() - self.config.reservation_timeout_s)

    def knows(self, decision_id: str) -> bool:
        """Whether :meth:`feedback` can score this decision: this router's, or (Redis ledger) another router's on the
        namespace in the last day.

        Raises:
            LedgerUnavailableError: the decision is not this router's and the shared learning state cannot be read.
        """
        return self.outcomes.knows(decision_id)

    async def afeedback(self, decision_id: str, quality: float) -> None:
        """Async :meth:`feedback`."""
        await asyncio.to_thread(self.feedback, decision_id, quality)

    # ----------------------------------------------------------------------------------------------- status

    def status(self) -> RouterStatus:
        """Budgets, spend, reservations, weights, phase and history size."""
        now = self._clock()
        try:
            self.duals.reload()
        except LedgerUnavailableError as exc:
            self._warn_learning(exc)
        weights = self.duals.lambdas
        rows = []
        for deployment in self._deployments:
            window = self._window(deployment, now)
            spent, held = self.ledger.usage(deployment.name, window, now)
            limits = deployment.budget_limits()
            rows.append(DeploymentStatus(
                name=deployment.name, model=deployment.model, window=deployment.window, window_index=window,
                limits=limits, spent=spent, reserved=held,
                remaining={u: limit - spent[u] - held[u] for u, limit in limits.items()},
                weights=dict(weights.get(deployment.name, {})), fallback=deployment.fallback,
            ))
        return RouterStatus(
            phase="learned" if self._learned else "warmup", mode=self.config.mode, decisions=self._count(),
            next_solve_at=self.duals.next_solve_at, history_size=self._history_size(),
            history_pending=self.decisions.history_pending_count(), unsettled=self.decisions.unsettled_count(),
            mu=self.duals.mu,
            solve_notes=self.duals.notes, unknown_models=self.unknown_models(), deployments=rows,
        )

    def _history_size(self) -> int | None:
        """Records in the history store (``None`` while it cannot be reached: status must not fail then)."""
        try:
            return self.history.count()
        except STORE_UNREACHABLE:
            return None

    def unknown_models(self) -> list[str]:
        """The deployments' models that history holds no quality score for (routed on the prior quality).

        The first time a model is found unknown, a warning names it in the log. While the history store is
        unreachable and has never been scanned, nothing is known and no model is named (this must not fail a route).
        """
        try:
            quality = self.history.profile_means(self._profiles)[:, FIELDS.index("quality")]
        except STORE_UNREACHABLE:
            return []
        unknown = [p for p, q in zip(self._profiles, quality, strict=True) if np.isnan(q)]
        for model in sorted(set(unknown) - self._warned):
            self._warned.add(model)
            _log.warning("no history for model %s: it is routed on the prior quality %s until onboarded (llm-router "
                         "profile run, then llm-router onboard) or scored by feedback", model, PRIOR_QUALITY)
        return unknown

    async def astatus(self) -> RouterStatus:
        """Async :meth:`status`."""
        return await asyncio.to_thread(self.status)

    def import_history(
        self, data: DataFile | str | Path, *, batch_size: int = 256, progress: bool = False,
        prices: Mapping[str, Price] | None = None,
    ) -> ImportReport:
        """Embed a data file's valid rows into this router's history, keeping prompt texts only if the config does.

        Texts embedded before under the same embedding model (by any import sharing the config's embedding cache,
        see ``embedding_cache``) are read from the cache, not embedded again.

        Args:
            data: a parsed file, or the path of one (see :func:`~llm_router_plugin.read_data`).
            batch_size: rows per embedding call.
            progress: show a progress bar.
            prices: model → list price, for the completion tokens a row's cost implies when the file has no token
                counts (default: the shipped prices for the shipped sample; see
                :func:`~llm_router_plugin.dataset.import_history`).

        Returns:
            Counts of added, existing and rejected rows, and the time it took.

        Raises:
            FileNotFoundError: ``data`` names no file.
            HistoryFormatError: the file cannot be read or lacks the ``prompt`` or model columns.
            ValueError: ``batch_size`` is below 1.
        """
        parsed = data if isinstance(data, DataFile) else read_data(data)
        self.history.label_clusters(self.profile_set.centres)  # records labelled as written: no pass later
        embedder = PackedEmbedder(CachingEmbedder(self.embedder, cache_path(self.config)), shipped_packs())
        return import_history(parsed, self.history, embedder, batch_size=batch_size,
                              store_prompts=self.config.store_prompts, progress=progress, prices=prices)


def _non_text_parts(query: Query) -> int:
    """How many image, audio, file and other non-text content parts a chat query holds."""
    if isinstance(query, str):
        return 0
    return sum(
        1
        for message in query
        if isinstance(content := message.get("content"), list)
        for part in content
        if isinstance(part, dict) and part.get("type", "text") != "text"
    )
