"""Our router in the benchmark, through its public API: ``route`` each test query, then ``record`` what it cost.

Every (seed, split) gets a fresh router on its own folder: one deployment per model with the split's USD budget
over a ``total`` window, and ``expected_queries`` set to the test stream's length (the benchmark knows N; a
deployment would configure its expected volume). History is the seed's 70% split, written into Chroma with the
cached embeddings. The router never sees the true quality of what it serves; ``record`` gets the true cost. A
decision the harness refuses to serve is recorded as failed, which releases its reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_router_plugin.bench.harness import NO_MODEL, Harness, RunResult
from llm_router_plugin.config import DeploymentConfig, EstimatorConfig, RouterConfig
from llm_router_plugin.errors import BudgetExhaustedError
from llm_router_plugin.estimator import Estimator
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.pricing import Price
from llm_router_plugin.profiles import ProfileSet
from llm_router_plugin.router import Router

#: Error recorded for a decision the harness refused (its true cost did not fit the budget).
DROPPED = "not served: the true cost exceeds the deployment's remaining budget"


class CachedEmbedder:
    """An :class:`~llm_router_plugin.embedding.Embedder` that returns precomputed vectors for known texts.

    Args:
        texts: the texts.
        vectors: their embeddings, one row per text.
        name: the name of the model that computed them.
    """

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, name: str) -> None:
        if len(texts) != len(vectors):
            raise ValueError(f"vectors: need one per text ({len(texts)}), got {len(vectors)}")
        self._row = {text: row for row, text in enumerate(texts)}
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self._name = name

    @property
    def name(self) -> str:
        """The name of the model that computed the vectors."""
        return self._name

    @property
    def dimension(self) -> int:
        """Vector length."""
        return int(self._vectors.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The cached vectors of ``texts``.

        Raises:
            ValueError: a text was not cached.
        """
        try:
            return self._vectors[[self._row[text] for text in texts]]
        except KeyError:
            raise ValueError("texts: a text is not in the benchmark's embedding cache") from None

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Same as :meth:`embed`."""
        return self.embed(texts)


@dataclass(frozen=True)
class RouterSettings:
    """How the benchmark configures our router (everything else keeps the router's defaults).

    Attributes:
        estimator: the estimator settings (``k`` comes from the command line).
        feedback: pass the true quality to ``record`` (a separately labelled variant: serving-time quality is not
            known in production).
        overrides: further :class:`RouterConfig` fields, e.g. ``{"warmup_queries": 100}``.
    """

    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    feedback: bool = False
    overrides: dict[str, object] = field(default_factory=dict)


class _Clock:
    """A replay clock: one second per query, so decisions are ordered and windows never reset."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def router_config(folder: Path, models: Sequence[str], budgets: np.ndarray, expected: int,
                  settings: RouterSettings, prices: Mapping[str, Price] | None = None) -> RouterConfig:
    """The router config of one run.

    Args:
        folder: the run's data folder (ledger and decision log).
        models: one deployment per model, named after it.
        budgets: USD budget per model.
        expected: queries expected over the budgets' life (the test stream's length).
        settings: estimator and overrides.
        prices: the models' list prices, configured on their deployments as an operator would (a model without
            one is priced from history).

    Returns:
        The config.
    """
    prices = prices or {}
    return RouterConfig.model_validate({
        "data_dir": folder,
        "deployments": [
            DeploymentConfig(
                name=model, usd_budget=float(budget), window="total",
                input_usd_per_mtok=prices[model].input_usd_per_mtok if model in prices else None,
                output_usd_per_mtok=prices[model].output_usd_per_mtok if model in prices else None,
            )
            for model, budget in zip(models, budgets, strict=True)
        ],
        "expected_queries": expected,
        "estimator": settings.estimator,
        **settings.overrides,
    })


@dataclass(frozen=True)
class Stream:
    """The test stream and what really happened on each model (arrays of shape ``(n, M)``, models in order).

    Attributes:
        prompts: the queries, in arrival order.
        quality: true quality.
        cost: true cost (USD).
        prompt_tokens: prompt tokens per model.
        completion_tokens: completion tokens per model (NaN where the data has none: recorded as 0).
    """

    prompts: Sequence[str]
    quality: np.ndarray
    cost: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray


def replay(router: Router, stream: Stream, harness: Harness, feedback: bool = False,
           tick: Callable[[], None] | None = None) -> RunResult:
    """Route every prompt with ``router``, serve its decisions through ``harness`` and record what really happened.

    A served query is recorded with its true tokens and cost, as a deployment's usage report would give them: the
    router's history learns from them (``learn_online``).

    Args:
        router: a router whose deployments are named after the harness's models, in order.
        stream: the test stream and its true outcomes.
        harness: serves the decisions on true costs.
        feedback: pass the true quality to ``record`` (the feedback variant).
        tick: advances the router's clock between queries.

    Returns:
        The run's result.
    """
    names = [d.name for d in router.config.deployments]
    for query, prompt in enumerate(stream.prompts):
        if tick is not None:
            tick()
        try:
            decision = router.route(prompt)
        except BudgetExhaustedError:
            harness.serve(query, NO_MODEL)
            continue
        model = names.index(decision.deployment)
        if harness.serve(query, model):
            router.record(
                decision.id, int(stream.prompt_tokens[query, model]),
                int(np.nan_to_num(stream.completion_tokens[query, model])), cost_usd=harness.cost_of(query, model),
                quality=float(stream.quality[query, model]) if feedback else None,
            )
        else:
            router.record(decision.id, 0, 0, error=DROPPED)
    return harness.result()


def run_router(folder: Path, history: ChromaHistory, embedder: CachedEmbedder, models: Sequence[str],
               budgets: np.ndarray, stream: Stream, settings: RouterSettings,
               prices: Mapping[str, Price] | None = None, profile_set: ProfileSet | None = None,
               estimator: Estimator | None = None) -> RunResult:
    """Build a fresh router for one run and replay the test stream through it.

    Args:
        folder: an empty folder for the run's ledger and decision log.
        history: the history store (the seed's 70% split).
        embedder: returns the cached embeddings.
        models: the models (deployments).
        budgets: USD budget per model.
        stream: the test stream and its true outcomes.
        settings: how to configure the router.
        prices: the models' prices (see :func:`router_config`).
        profile_set: the profile set built from the history split (``None``: the shipped one).
        estimator: a replacement estimator reading ``history`` (a baseline's); ``None`` = the router's own.

    Returns:
        The run's result.
    """
    clock = _Clock()
    config = router_config(folder, models, budgets, len(stream.prompts), settings, prices)
    router = Router(config, embedder=embedder, history=history, clock=clock, profile_set=profile_set,
                    estimator=estimator)
    harness = Harness(stream.quality, stream.cost, budgets)
    return replay(router, stream, harness, settings.feedback, clock.tick)
