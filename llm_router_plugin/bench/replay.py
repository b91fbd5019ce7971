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
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.pricing import Price
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


def replay(router: Router, prompts: Sequence[str], harness: Harness, quality: np.ndarray | None = None,
           tick: Callable[[], None] | None = None) -> RunResult:
    """Route every prompt with ``router`` and serve its decisions through ``harness``.

    Args:
        router: a router whose deployments are named after the harness's models, in order.
        prompts: the test stream.
        harness: serves the decisions on true costs.
        quality: true quality to pass to ``record`` (the feedback variant); ``None`` passes none.
        tick: advances the router's clock between queries.

    Returns:
        The run's result.
    """
    names = [d.name for d in router.config.deployments]
    for query, prompt in enumerate(prompts):
        if tick is not None:
            tick()
        try:
            decision = router.route(prompt)
        except BudgetExhaustedError:
            harness.serve(query, NO_MODEL)
            continue
        model = names.index(decision.deployment)
        if harness.serve(query, model):
            known = None if quality is None else float(quality[query, model])
            router.record(decision.id, decision.prompt_tokens, 0, cost_usd=harness.cost_of(query, model),
                          quality=known)
        else:
            router.record(decision.id, 0, 0, error=DROPPED)
    return harness.result()


def run_router(folder: Path, history: ChromaHistory, embedder: CachedEmbedder, models: Sequence[str],
               budgets: np.ndarray, prompts: Sequence[str], true_quality: np.ndarray, true_cost: np.ndarray,
               settings: RouterSettings, prices: Mapping[str, Price] | None = None) -> RunResult:
    """Build a fresh router for one run and replay the test stream through it.

    Args:
        folder: an empty folder for the run's ledger and decision log.
        history: the history store (the seed's 70% split).
        embedder: returns the cached embeddings.
        models: the models (deployments).
        budgets: USD budget per model.
        prompts: the test stream.
        true_quality: its true quality, shape ``(n, M)``.
        true_cost: its true cost, shape ``(n, M)``.
        settings: how to configure the router.
        prices: the models' prices (see :func:`router_config`).

    Returns:
        The run's result.
    """
    clock = _Clock()
    config = router_config(folder, models, budgets, len(prompts), settings, prices)
    router = Router(config, embedder=embedder, history=history, clock=clock)
    harness = Harness(true_quality, true_cost, budgets)
    return replay(router, prompts, harness, true_quality if settings.feedback else None, clock.tick)
