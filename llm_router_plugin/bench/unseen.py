"""The unseen-model protocol (UniRoute, arXiv 2502.08773) on the budgeted replay.

Per trial (one seed): the seeded 70/30 history/test split of the main protocol, a seeded share of the models made
*unseen* (the history keeps their outcomes only on the profile prompts), and a profile set built from the history
split (K-means on its embeddings, N prompts). Every policy is our router under the same budgets, replaying the test
stream; only what it knows of the unseen models differs:

- ``ours-full``: the whole history (the ceiling: every model seen);
- ``ours-onboarded``: unseen models known by their profile answers only, estimated by the router's own estimator
  (their per-cluster profile means, blended with neighbours as traffic adds outcomes);
- ``zero-router``: unseen models at their mean over the profile set, for every query (UniRoute's ZeroRouter);
- ``knn-profile``: unseen models at the plain mean of the k nearest profile prompts (k-NN restricted to the profile).

Beside the budgeted runs, each policy's estimates of the test stream give an unbudgeted quality–cost curve
(:func:`deferral_curve`) and its normalised area (:func:`deferral_area`), the paper's deferral-curve metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_router_plugin.bench.cache import EmbeddingCache
from llm_router_plugin.bench.harness import RunResult
from llm_router_plugin.bench.knn import ExactHistory, plain_config
from llm_router_plugin.bench.optima import offline_optimum
from llm_router_plugin.bench.protocol import SPLITS, Problem, budgets, split_rows
from llm_router_plugin.bench.replay import CachedEmbedder, RouterSettings, Stream, run_router
from llm_router_plugin.bench.runner import embed_problem, scratch_folder
from llm_router_plugin.embedding import Embedder
from llm_router_plugin.estimator import Estimates, Estimator, KnnEstimator, tie_offsets
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.profiles import build_profile_set

#: Policy ids → display names, in table order.
UNSEEN_POLICIES = {
    "ours-full": "ours, full history (every model seen)",
    "ours-onboarded": "ours, unseen models onboarded (profile clusters)",
    "zero-router": "ZeroRouter (unseen at profile mean)",
    "knn-profile": "kNN on profile prompts",
}
#: λ values (× 1 / mean estimated cost) the deferral curve sweeps, besides 0 and ∞.
CURVE_LAMBDAS = tuple(np.geomspace(1e-3, 1e3, 61))
#: Estimates computed per batch for the curves.
_CHUNK = 400


@dataclass(frozen=True)
class UnseenOptions:
    """What the unseen-model benchmark runs.

    Attributes:
        seeds: one trial per seed (split, unseen models and profile set all drawn from it).
        splits: budget splits per trial.
        fraction: share of the models made unseen (at least one model, at most all but one).
        profile_size: prompts in the profile set (N).
        clusters: K-means clusters (K).
        k: neighbours of the estimates.
        multiplier: total budget in units of "every test query on the cheapest model".
        router: how our router is configured (its estimator's ``k`` is replaced by ``k``).
        policies: policy ids, a subset of :data:`UNSEEN_POLICIES` (``ours-full`` always runs: it is the reference).
    """

    seeds: tuple[int, ...] = (42, 1, 2, 3, 4)
    splits: tuple[str, ...] = SPLITS
    fraction: float = 1 / 3
    profile_size: int = 200
    clusters: int = 16
    k: int = 5
    multiplier: float = 1.0
    router: RouterSettings = field(default_factory=RouterSettings)
    policies: tuple[str, ...] = tuple(UNSEEN_POLICIES)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        bad = [p for p in self.policies if p not in UNSEEN_POLICIES]
        if bad:
            raise ValueError(f"policies: unknown {bad} (known with --unseen: {', '.join(UNSEEN_POLICIES)})")
        if "ours-full" not in self.policies:
            object.__setattr__(self, "policies", ("ours-full", *self.policies))
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ValueError(f"splits: unknown or empty {unknown} (known: {', '.join(SPLITS)})")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"unseen: the share of unseen models must be in (0, 1), got {self.fraction}")
        if self.profile_size < 1 or self.clusters < 1 or self.k < 1:
            raise ValueError("profile_size/clusters/k: must be at least 1")
        if self.multiplier <= 0:
            raise ValueError(f"budget: must be positive, got {self.multiplier}")


@dataclass(frozen=True)
class Trial:
    """One seed's results.

    Attributes:
        seed: the seed.
        unseen: the models made unseen.
        profile_size: prompts in its profile set.
        results: split → policy id (and ``"c_opt"``) → result.
        curves: policy id → deferral curve points ``(mean true cost, mean true quality)``.
        areas: policy id → normalised area under its deferral curve.
    """

    seed: int
    unseen: tuple[str, ...]
    profile_size: int
    results: dict[str, dict[str, RunResult]]
    curves: dict[str, list[tuple[float, float]]]
    areas: dict[str, float]


@dataclass(frozen=True)
class UnseenResult:
    """Everything the unseen-model benchmark produced.

    Attributes:
        options: what ran.
        problem: the data.
        embedder: the embedding model's name.
        trials: one per seed.
        seconds: wall time.
    """

    options: UnseenOptions
    problem: Problem
    embedder: str
    trials: list[Trial]
    seconds: float


class OverrideEstimator:
    """An estimator whose estimates for some profiles come from a baseline instead of the base estimator.

    The replaced quality gets the base's deterministic tie-break offsets, so that a constant baseline estimate is
    split by the dual rule the way the router's own estimates are.

    Args:
        base: the estimator for every other profile.
        baseline: estimates for the replaced profiles, called with the embeddings and the profiles.
        profiles: the profiles whose estimates are replaced.
        tie_break: the base's tie-break weight t.
    """

    def __init__(self, base: Estimator, baseline: Callable[[np.ndarray, list[str]], Estimates],
                 profiles: Sequence[str], tie_break: float) -> None:
        self._base = base
        self._baseline = baseline
        self._replaced = set(profiles)
        self._tie_break = tie_break

    def estimate(self, embeddings: np.ndarray, profiles: list[str]) -> Estimates:
        """The base's estimates with the replaced profiles' columns from the baseline."""
        embeddings = np.atleast_2d(embeddings)
        estimates = self._base.estimate(embeddings, profiles)
        columns = [i for i, p in enumerate(profiles) if p in self._replaced]
        if not columns:
            return estimates
        other = self._baseline(embeddings, profiles)
        t = self._tie_break
        quality = (1.0 - t) * other.quality + t * tie_offsets(embeddings, profiles)
        merged: dict[str, Any] = {}
        for name, value in (("quality", quality), ("prompt_tokens", other.prompt_tokens),
                            ("completion_tokens", other.completion_tokens), ("cost_usd", other.cost_usd),
                            ("completion_tokens_high", other.completion_tokens_high)):
            column = getattr(estimates, name).copy()
            column[:, columns] = value[:, columns]
            merged[name] = column
        return replace(estimates, **merged)

    def estimate_without_text(self, profiles: list[str]) -> Estimates:
        """The base's estimates (no text: every model at its mean)."""
        return self._base.estimate_without_text(profiles)


def zero_router(history: ExactHistory) -> Callable[[np.ndarray, list[str]], Estimates]:
    """ZeroRouter's estimates: every profile at its mean over ``history`` (for unseen models: the profile set)."""
    means = KnnEstimator(history, plain_config(1))

    def baseline(embeddings: np.ndarray, profiles: list[str]) -> Estimates:
        one = means.estimate_without_text(profiles)
        n = len(embeddings)
        repeated: dict[str, Any] = {name: np.repeat(getattr(one, name), n, axis=0) for name in (
            "quality", "prompt_tokens", "completion_tokens", "cost_usd", "support", "completion_tokens_high")}
        return replace(one, **repeated)

    return baseline


def knn_on_profile(profile_history: ExactHistory, k: int) -> Callable[[np.ndarray, list[str]], Estimates]:
    """Plain k-NN estimates over the profile prompts only."""
    return KnnEstimator(profile_history, plain_config(k)).estimate


def deferral_curve(est_quality: np.ndarray, est_cost: np.ndarray, quality: np.ndarray,
                   cost: np.ndarray) -> list[tuple[float, float]]:
    """The unbudgeted quality–cost curve of a router's estimates.

    For each λ in 0, :data:`CURVE_LAMBDAS` / mean ĝ and ∞, every query goes to argmax d̂ − λ·ĝ (∞: the least
    estimated cost, then the best estimated quality); the point is the mean true cost and quality of those choices.

    Args:
        est_quality: d̂, shape ``(n, M)``.
        est_cost: ĝ, shape ``(n, M)`` (NaN taken as 0).
        quality: true d.
        cost: true g.

    Returns:
        ``(mean cost, mean quality)`` points, by increasing λ.
    """
    est_cost = np.nan_to_num(est_cost)
    scale = float(np.mean(est_cost)) or 1.0
    rows = np.arange(len(quality))
    points = []
    for lam in (0.0, *(v / scale for v in CURVE_LAMBDAS)):
        choice = np.argmax(est_quality - lam * est_cost, axis=1)
        points.append((float(cost[rows, choice].mean()), float(quality[rows, choice].mean())))
    cheapest = _cheapest(est_quality, est_cost)
    points.append((float(cost[rows, cheapest].mean()), float(quality[rows, cheapest].mean())))
    return points


def _cheapest(est_quality: np.ndarray, est_cost: np.ndarray) -> np.ndarray:
    """Per query, the least estimated cost, ties broken by the best estimated quality."""
    low = est_cost <= est_cost.min(axis=1, keepdims=True)
    return np.argmax(np.where(low, est_quality, -np.inf), axis=1)


def deferral_area(points: Sequence[tuple[float, float]], low: float, high: float, floor: float) -> float:
    """Mean quality over cost budgets from ``low`` to ``high``: the normalised area under a deferral curve.

    At a budget x the router reaches the best quality among its points that cost at most x (``floor`` where none
    does, e.g. the quality of always using the cheapest model).

    Raises:
        ValueError: ``high`` is not above ``low``.
    """
    if not high > low:
        raise ValueError(f"high: the cost range must be increasing, got [{low}, {high}]")
    grid = np.linspace(low, high, 401)
    costs = np.array([c for c, _ in points])
    qualities = np.array([q for _, q in points])
    reach = np.array([max([floor, *qualities[costs <= x]]) for x in grid])
    return float(np.trapezoid(reach, grid) / (high - low))


class _TrialContext:
    """One trial's split, unseen models, profile set, histories and estimators."""

    def __init__(self, problem: Problem, vectors: np.ndarray, seed: int, options: UnseenOptions,
                 embedder: str) -> None:
        self.problem, self.seed = problem, seed
        split = split_rows(problem.size, seed)
        self.split = split
        h, t = split.history, split.test
        models = list(problem.models)
        count = min(len(models) - 1, max(1, round(options.fraction * len(models))))
        self.unseen = tuple(sorted(np.random.default_rng(seed).choice(models, count, replace=False).tolist()))
        self.ids = [f"h{row}" for row in h]
        self.full = ExactHistory(vectors[h], problem.quality[h], problem.cost[h], problem.models,
                                 problem.prompt_tokens[h], problem.completion_tokens[h])
        self.profile = build_profile_set(
            self.ids, vectors[h], [problem.prompts[i] for i in h], [None] * len(h), embedding_model=embedder,
            size=min(options.profile_size, len(h)), clusters=min(options.clusters, len(h)), seed=seed,
        )
        in_profile = np.isin(self.ids, [p.id for p in self.profile.prompts])
        self.reduced = self.full.forget(self.unseen, in_profile)
        self.profile_only = self.full.subset(in_profile)
        self.stream = Stream([problem.prompts[i] for i in t], problem.quality[t], problem.cost[t],
                             problem.prompt_tokens[t], problem.completion_tokens[t])
        self.test_vectors = vectors[t]

    def baseline(self, policy: str, k: int) -> Callable[[np.ndarray, list[str]], Estimates] | None:
        if policy == "zero-router":
            return zero_router(self.reduced)
        if policy == "knn-profile":
            return knn_on_profile(self.profile_only, k)
        return None

    def estimator(self, policy: str, source: ExactHistory | ChromaHistory, options: UnseenOptions) -> Estimator:
        """The estimator a policy's router uses over ``source`` (its own store, or the exact arrays for curves)."""
        config = options.router.estimator.model_copy(update={"k": options.k})
        base = KnnEstimator(source, config, self.profile.centres)
        baseline = self.baseline(policy, options.k)
        return base if baseline is None else OverrideEstimator(base, baseline, self.unseen, config.tie_break)

    def history(self, policy: str) -> ExactHistory:
        return self.full if policy == "ours-full" else self.reduced


def _curve(ctx: _TrialContext, policy: str, options: UnseenOptions) -> list[tuple[float, float]]:
    estimator = ctx.estimator(policy, ctx.history(policy), options)
    models = list(ctx.problem.models)
    parts = [estimator.estimate(ctx.test_vectors[s : s + _CHUNK], models) for s in
             range(0, len(ctx.test_vectors), _CHUNK)]
    quality = np.concatenate([p.quality for p in parts])
    cost = np.concatenate([p.cost_usd for p in parts])
    return deferral_curve(quality, cost, ctx.stream.quality, ctx.stream.cost)


def _trial(ctx: _TrialContext, options: UnseenOptions, embedder: CachedEmbedder, base: Path) -> Trial:
    records = {"full": ctx.full.records(ctx.ids), "reduced": ctx.reduced.records(ctx.ids)}
    results: dict[str, dict[str, RunResult]] = {}
    settings = replace(options.router, estimator=options.router.estimator.model_copy(update={"k": options.k}))
    q, c = ctx.stream.quality, ctx.stream.cost
    for split in options.splits:
        limits = budgets(ctx.problem, ctx.split, split, options.multiplier)
        results[split] = {}
        for policy in options.policies:
            run_folder = base / f"{policy}-{split}"
            store = ChromaHistory(run_folder / "chroma")
            store.upsert(records["full" if policy == "ours-full" else "reduced"])
            results[split][policy] = run_router(
                run_folder, store, embedder, ctx.problem.models, limits, ctx.stream, settings, ctx.problem.prices,
                ctx.profile, ctx.estimator(policy, store, options),
            )
        results[split]["c_opt"] = offline_optimum(q, c, limits, q, c).result
    curves = {policy: _curve(ctx, policy, options) for policy in options.policies}
    single_cost = c.mean(axis=0)
    cheapest = int(np.argmin(single_cost))
    areas = {policy: deferral_area(points, float(single_cost.min()), float(single_cost.max()),
                                   float(q[:, cheapest].mean()))
             for policy, points in curves.items()}
    return Trial(ctx.seed, ctx.unseen, len(ctx.profile.prompts), results, curves, areas)


def run_unseen(problem: Problem, embedder: Embedder, options: UnseenOptions, cache: EmbeddingCache,
               progress: bool = True) -> UnseenResult:
    """Run the unseen-model protocol on a data set.

    Args:
        problem: the data (complete rows).
        embedder: embeds the prompts (once per data file; cached).
        options: trials, splits, share of unseen models, profile size and clusters.
        cache: where embeddings are cached.
        progress: show progress bars.

    Returns:
        Every trial's results.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    vectors, cached = embed_problem(problem, embedder, cache, progress)
    trials = []
    with scratch_folder() as folder:
        for seed in tqdm(options.seeds, desc="unseen-model trials", unit="trial", disable=not progress):
            ctx = _TrialContext(problem, vectors, seed, options, cached.name)
            trials.append(_trial(ctx, options, cached, folder / f"trial-{seed}"))
    return UnseenResult(options, problem, embedder.name, trials, time.perf_counter() - started)
