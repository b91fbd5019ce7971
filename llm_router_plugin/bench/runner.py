"""Runs the whole protocol: for every seed and budget split, every policy, the offline optima, and our router.

Per seed the history split is loaded once into an exact index and a Chroma store (the cached embeddings, never
embedded again), and the baselines' estimates are computed once for the whole test stream. Per (seed, split) our
router replays the stream on a fresh ledger. Extra budget multipliers (for the plot) run on the first seed only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_router_plugin.bench.cache import EmbeddingCache
from llm_router_plugin.bench.harness import RunResult, evaluate
from llm_router_plugin.bench.knn import ExactHistory, estimate, plain_config
from llm_router_plugin.bench.optima import offline_optimum
from llm_router_plugin.bench.policies import (
    Estimated,
    batch_split,
    greedy_cost,
    greedy_perf,
    port_reference,
    random_policy,
)
from llm_router_plugin.bench.protocol import SPLITS, Problem, Split, budgets, split_rows
from llm_router_plugin.bench.replay import CachedEmbedder, RouterSettings, Stream, run_router
from llm_router_plugin.embedding import Embedder
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.profiles import ProfileSet, build_profile_set

#: Policy ids (for ``--policies``) → display names, in table order. ``ours-feedback`` is an opt-in variant.
POLICIES = {
    "random": "random",
    "greedy-perf": "greedy-perf",
    "greedy-cost": "greedy-cost",
    "knn-perf": "kNN-perf",
    "knn-cost": "kNN-cost",
    "batchsplit": "BatchSplit",
    "port": "PORT-reference",
    "ours": "ours",
    "ours-feedback": "ours + quality feedback",
}
DEFAULT_POLICIES = tuple(p for p in POLICIES if p != "ours-feedback")
#: The offline optima, always computed (the ratio columns need them).
C_HAT_OPT, C_OPT = "c_hat_opt", "c_opt"
OPTIMA = {C_HAT_OPT: "Ĉ_opt (offline LP, estimates)", C_OPT: "C_opt (offline LP, truth)"}
#: Budget multipliers the plot sweeps.
PLOT_MULTIPLIERS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
BASELINES = ("random", "greedy-perf", "greedy-cost", "knn-perf", "knn-cost", "batchsplit")


@dataclass(frozen=True)
class BenchOptions:
    """What to run.

    Attributes:
        seeds: split seeds.
        splits: budget splits (see :data:`~llm_router_plugin.bench.protocol.SPLITS`).
        k: neighbours of the protocol's k-NN estimates (baselines, PORT, Ĉ_opt, and our router's estimator).
        multiplier: total budget in units of "every test query on the cheapest model".
        policies: policy ids, a subset of :data:`POLICIES`.
        router: how our router is configured (its estimator's ``k`` is replaced by ``k``).
        plot_multipliers: budget multipliers to sweep on the first seed for the plot (empty: no sweep).
        profile_size: prompts in the profile set built from each history split (N).
        clusters: its K-means clusters (K).
    """

    seeds: tuple[int, ...] = (42, 1, 2)
    splits: tuple[str, ...] = SPLITS
    k: int = 5
    multiplier: float = 1.0
    policies: tuple[str, ...] = DEFAULT_POLICIES
    router: RouterSettings = field(default_factory=RouterSettings)
    plot_multipliers: tuple[float, ...] = ()
    profile_size: int = 200
    clusters: int = 16

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ValueError(f"splits: unknown or empty {unknown} (known: {', '.join(SPLITS)})")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ValueError(f"policies: unknown or empty {bad} (known: {', '.join(POLICIES)})")
        if self.k < 1:
            raise ValueError(f"k: must be at least 1, got {self.k}")
        if self.multiplier <= 0 or any(m <= 0 for m in self.plot_multipliers):
            raise ValueError("budget: budget multipliers must be positive")
        if self.profile_size < 1 or self.clusters < 1:
            raise ValueError(f"profile_size/clusters: must be at least 1, got {self.profile_size}/{self.clusters}")


@dataclass(frozen=True)
class Run:
    """One (seed, split, budget multiplier): every policy's result.

    Attributes:
        seed: the split seed.
        split: the budget split.
        multiplier: the budget multiplier.
        budgets: per-model budgets (USD).
        results: policy id (and the optima's ids) → result.
        c_opt_lp: C_opt's LP optimum.
        c_hat_opt_lp: Ĉ_opt's LP optimum (on the estimates).
        port_alpha: the α PORT-reference won with (``None`` if it did not run).
        seconds: policy id → wall time of its decisions.
    """

    seed: int
    split: str
    multiplier: float
    budgets: np.ndarray
    results: dict[str, RunResult]
    c_opt_lp: float
    c_hat_opt_lp: float
    port_alpha: float | None
    seconds: dict[str, float]


@dataclass(frozen=True)
class BenchResult:
    """Everything a benchmark produced.

    Attributes:
        options: what ran.
        problem: the data (models, sizes, cost note).
        embedder: the embedding model's name.
        runs: the protocol runs (the main multiplier).
        sweep: the plot's runs (first seed, every plot multiplier).
        test_size: queries per test stream.
        history_size: records per history split.
        seconds: wall time of the whole benchmark.
    """

    options: BenchOptions
    problem: Problem
    embedder: str
    runs: list[Run]
    sweep: list[Run]
    test_size: int
    history_size: int
    seconds: float


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for stores and ledgers, in memory (``/dev/shm``) where the OS offers it."""
    # SQLite commits fsync; on a RAM-backed folder a replay runs several times faster, with the same code path.
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="llm-router-bench-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _SeedContext:
    """What every run of one seed shares: the split, the history stores and the baselines' estimates."""

    def __init__(self, problem: Problem, vectors: np.ndarray, split: Split, options: BenchOptions, folder: Path,
                 embedder: str) -> None:
        self.problem = problem
        self.split = split
        self.folder = folder
        h, t, k = split.history, split.test, options.k
        self.exact = ExactHistory(vectors[h], problem.quality[h], problem.cost[h], problem.models,
                                  problem.prompt_tokens[h], problem.completion_tokens[h])
        self.ids = [f"h{seed_row}" for seed_row in h]
        self.records = self.exact.records(self.ids)
        self.profile: ProfileSet = build_profile_set(
            self.ids, vectors[h], [problem.prompts[i] for i in h], [None] * len(h), embedding_model=embedder,
            size=min(options.profile_size, len(h)), clusters=min(options.clusters, len(h)), seed=split.seed,
        )
        # The protocol's baselines read approximate neighbours (Chroma's HNSW), as PORT does.
        self.approx_store = self.new_store("ann", approximate=True)
        plain = plain_config(k)
        self.approx = Estimated(*estimate(self.approx_store, vectors[t], problem.models, plain))
        self.exact_estimates = Estimated(*estimate(self.exact, vectors[t], problem.models, plain))
        self.stream = Stream([problem.prompts[i] for i in t], problem.quality[t], problem.cost[t],
                             problem.prompt_tokens[t], problem.completion_tokens[t])

    def new_store(self, name: str, approximate: bool = False) -> ChromaHistory:
        """A fresh Chroma store holding the history split, searched as a router searches it or only by HNSW."""
        path = self.folder / name / "chroma"
        store = ChromaHistory(path, exact_search_max=0) if approximate else ChromaHistory(path)
        store.upsert(self.records)
        return store


def _run(ctx: _SeedContext, options: BenchOptions, embedder: CachedEmbedder, split: str, multiplier: float) -> Run:
    limits = budgets(ctx.problem, ctx.split, split, multiplier)
    q, c, seed = ctx.stream.quality, ctx.stream.cost, ctx.split.seed
    cheap: dict[str, Callable[[], np.ndarray]] = {
        "random": lambda: random_policy(len(q), len(limits), seed),
        "greedy-perf": lambda: greedy_perf(ctx.approx),
        "greedy-cost": lambda: greedy_cost(ctx.approx, limits),
        "knn-perf": lambda: greedy_perf(ctx.exact_estimates),
        "knn-cost": lambda: greedy_cost(ctx.exact_estimates, limits),
        "batchsplit": lambda: batch_split(ctx.approx, limits),
    }
    results: dict[str, RunResult] = {}
    seconds: dict[str, float] = {}
    alpha = None
    for name in options.policies:
        start = time.perf_counter()
        if name in cheap:
            results[name] = evaluate(cheap[name](), q, c, limits)
        elif name == "port":
            results[name], alpha = port_reference(ctx.approx, limits, q, c, seed)
        else:
            folder = ctx.folder / f"{name}-{split}-{multiplier:g}"
            store = ctx.new_store(folder.name)  # a router writes what it serves into its history: a fresh copy
            start = time.perf_counter()
            results[name] = run_router(folder, store, embedder, ctx.problem.models, limits, ctx.stream,
                                       _router_settings(options, feedback=name == "ours-feedback"),
                                       ctx.problem.prices, ctx.profile)
        seconds[name] = time.perf_counter() - start
    c_opt = offline_optimum(q, c, limits, q, c)
    c_hat = offline_optimum(ctx.exact_estimates.quality, ctx.exact_estimates.cost, limits, q, c)
    results[C_OPT], results[C_HAT_OPT] = c_opt.result, c_hat.result
    return Run(seed, split, multiplier, limits, results, c_opt.lp_objective, c_hat.lp_objective, alpha, seconds)


def _router_settings(options: BenchOptions, feedback: bool) -> RouterSettings:
    estimator = options.router.estimator.model_copy(update={"k": options.k})
    overrides = dict(options.router.overrides)
    if feedback:
        overrides["learn_online"] = True  # the feedback variant learns from the qualities it is told
    return RouterSettings(estimator=estimator, feedback=feedback or options.router.feedback, overrides=overrides)


def embed_problem(problem: Problem, embedder: Embedder, cache: EmbeddingCache, progress: bool
                  ) -> tuple[np.ndarray, CachedEmbedder]:
    """The prompts' embeddings (from the cache, else computed once) and an embedder that returns them."""
    vectors = cache.embeddings(problem.source, problem.prompts, embedder, progress=progress)
    return vectors, CachedEmbedder(problem.prompts, vectors, embedder.name)


def run_benchmark(problem: Problem, embedder: Embedder, options: BenchOptions, cache: EmbeddingCache,
                  progress: bool = True) -> BenchResult:
    """Run the protocol on a data set.

    Args:
        problem: the data (complete rows).
        embedder: embeds the prompts (once per data file; cached).
        options: seeds, splits, k, budget, policies.
        cache: where embeddings are cached.
        progress: show progress bars.

    Returns:
        Every run's results.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    vectors, cached = embed_problem(problem, embedder, cache, progress)
    jobs = [(seed, split, options.multiplier) for seed in options.seeds for split in options.splits]
    jobs += [(options.seeds[0], split, m) for split in options.splits for m in options.plot_multipliers
             if m != options.multiplier]
    runs: list[Run] = []
    sweep: list[Run] = []
    with scratch_folder() as folder, tqdm(total=len(jobs), desc="benchmark runs", unit="run",
                                          disable=not progress) as bar:
        for seed in options.seeds:
            ctx = _SeedContext(problem, vectors, split_rows(problem.size, seed), options, folder / f"seed-{seed}",
                               cached.name)
            for job_seed, split, multiplier in jobs:
                if job_seed != seed:
                    continue
                run = _run(ctx, options, cached, split, multiplier)
                (runs if multiplier == options.multiplier else sweep).append(run)
                bar.update(1)
    if options.plot_multipliers:
        sweep += [r for r in runs if r.seed == options.seeds[0] and options.multiplier in options.plot_multipliers]
    sizes = split_rows(problem.size, options.seeds[0])
    return BenchResult(options, problem, embedder.name, runs, sweep, len(sizes.test), len(sizes.history),
                       time.perf_counter() - started)
