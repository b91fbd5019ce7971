"""The benchmark protocol: the data as matrices, the seeded history/test split and the per-model budgets.

Rows with any missing score or cost are dropped. A file without cost columns gets its costs from per-model prices
(USD per million tokens) and token counts: the file's token columns where present, else the prompt's estimated
tokens (about four characters a token) and no completion tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_router_plugin.dataset import DataFile, DataRow
from llm_router_plugin.embedding import estimate_tokens
from llm_router_plugin.pricing import Price, completion_tokens_from_cost

#: The per-model budget splits of the protocol, by name.
SPLITS = ("weighted", "uniform", "cost", "perf")
#: Share of the rows that become history; the rest is the test stream.
HISTORY_FRACTION = 0.7


@dataclass(frozen=True)
class Problem:
    """A routing data set as dense matrices (complete rows only).

    Attributes:
        source: the data file.
        models: the models, the columns of ``quality`` and ``cost``.
        prompts: one prompt per row.
        quality: true quality d, shape ``(n, M)``.
        cost: true cost g in USD, shape ``(n, M)``.
        cost_note: where the costs come from, in one sentence (printed with the results).
        dropped: rows dropped for a missing score or cost (plus rows the reader rejected).
        prompt_tokens: prompt tokens per row and model: the file's, else estimated from the text.
        completion_tokens: completion tokens per row and model: the file's, else implied by the cost at the model's
            price (NaN where neither is known).
        prices: the models' prices, where known (what a deployment of that model would configure).
    """

    source: Path
    models: tuple[str, ...]
    prompts: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    cost_note: str
    dropped: int
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    prices: Mapping[str, Price]

    @property
    def size(self) -> int:
        """Number of rows."""
        return len(self.prompts)


@dataclass(frozen=True)
class Split:
    """One seeded history/test split.

    Attributes:
        seed: the seed that drew it.
        history: row indices of the history (70%).
        test: row indices of the test stream (30%), in arrival order.
    """

    seed: int
    history: np.ndarray
    test: np.ndarray


def _tokens(row: DataRow, model: str, price: Price | None) -> tuple[int, float]:
    """(prompt, completion) tokens of a row's model: recorded, else estimated from the text and the cost."""
    outcome = row.outcomes.get(model)
    prompt = outcome.prompt_tokens if outcome and outcome.prompt_tokens is not None else estimate_tokens(row.prompt)
    if outcome and outcome.completion_tokens is not None:
        return prompt, outcome.completion_tokens
    implied = None
    if outcome and outcome.cost_usd is not None and price is not None:
        implied = completion_tokens_from_cost(outcome.cost_usd, prompt, price)
    return prompt, np.nan if implied is None else implied


def _has_costs(data: DataFile) -> bool:
    return all(any(m in r.outcomes and r.outcomes[m].cost_usd is not None for r in data.rows) for m in data.models)


def _has_completion_tokens(data: DataFile) -> bool:
    return any(o.completion_tokens is not None for r in data.rows for o in r.outcomes.values())


def build_problem(data: DataFile, prices: Mapping[str, Price] | None = None) -> Problem:
    """Turn a parsed data file into the protocol's matrices.

    Args:
        data: the file (see :func:`llm_router_plugin.dataset.read_data`).
        prices: per-model prices; required when the file has no cost column for some model, and then used for
            every model (costs from token counts × prices).

    Returns:
        The complete rows as matrices.

    Raises:
        ValueError: the file lacks costs and ``prices`` is missing or lacks a model, or no row is complete.
    """
    priced = not _has_costs(data)
    if priced:
        if prices is None:
            raise ValueError(f"prices: {data.path.name} has no cost columns; pass --prices (USD per million tokens)")
        missing = [m for m in data.models if m not in prices]
        if missing:
            raise ValueError(f"prices: no price for models {missing}")
    prices = dict(prices or {})
    quality = np.full((len(data.rows), len(data.models)), np.nan)
    cost = np.full_like(quality, np.nan)
    prompt_tokens, completion_tokens = np.zeros_like(quality), np.full_like(quality, np.nan)
    for j, row in enumerate(data.rows):
        for i, model in enumerate(data.models):
            outcome = row.outcomes.get(model)
            if outcome is not None and outcome.quality is not None:
                quality[j, i] = outcome.quality
            prompt_tokens[j, i], completion_tokens[j, i] = _tokens(row, model, prices.get(model))
            if priced:  # the file's completion tokens, else none
                cost[j, i] = prices[model].cost(prompt_tokens[j, i], np.nan_to_num(completion_tokens[j, i]))
            elif outcome is not None and outcome.cost_usd is not None:
                cost[j, i] = outcome.cost_usd
    complete = ~(np.isnan(quality).any(axis=1) | np.isnan(cost).any(axis=1))
    if not complete.any():
        raise ValueError(f"data: {data.path.name} has no row with every model's score and cost")
    note = "costs: recorded per query in the file"
    if priced:
        completion = "the file's completion tokens" if _has_completion_tokens(data) else "no completion tokens"
        note = (f"costs: derived from --prices × token counts (the file has no cost columns; prompt tokens from "
                f"the file or estimated at ~4 characters a token, {completion})")
    return Problem(
        source=data.path,
        models=tuple(data.models),
        prompts=tuple(row.prompt for row, keep in zip(data.rows, complete, strict=True) if keep),
        quality=quality[complete],
        cost=cost[complete],
        cost_note=note,
        dropped=int((~complete).sum()) + len(data.rejected),
        prompt_tokens=prompt_tokens[complete],
        completion_tokens=completion_tokens[complete],
        prices=prices,
    )


def split_rows(size: int, seed: int, history_fraction: float = HISTORY_FRACTION) -> Split:
    """Draw the seeded random history/test split.

    Args:
        size: number of rows.
        seed: the seed.
        history_fraction: share of rows that become history.

    Returns:
        The split (the test order is the random order the stream arrives in).

    Raises:
        ValueError: fewer than two rows, or a fraction outside (0, 1).
    """
    if size < 2:
        raise ValueError(f"size: need at least 2 rows to split, got {size}")
    if not 0.0 < history_fraction < 1.0:
        raise ValueError(f"history_fraction: must be in (0, 1), got {history_fraction}")
    order = np.random.default_rng(seed).permutation(size)
    cut = min(size - 1, max(1, round(history_fraction * size)))
    return Split(seed, np.sort(order[:cut]), order[cut:])


def split_weights(quality: np.ndarray, cost: np.ndarray, split: str) -> np.ndarray:
    """Relative budget shares of the models under a named split.

    weighted ∝ √(mean d_i / mean g_i), uniform ∝ 1, cost ∝ √(1 / mean g_i), perf ∝ mean d_i.

    Args:
        quality: d, shape ``(n, M)`` (the means are taken over its rows).
        cost: g, shape ``(n, M)``.
        split: one of :data:`SPLITS`.

    Returns:
        Shares that sum to 1.

    Raises:
        ValueError: an unknown split name.
    """
    mean_d = quality.mean(axis=0)
    # A model that is free would take an infinite share; floor its mean cost at a tiny positive amount.
    mean_g = np.maximum(cost.mean(axis=0), 1e-12)
    if split == "weighted":
        weights = np.sqrt(mean_d / mean_g)
    elif split == "uniform":
        weights = np.ones_like(mean_d)
    elif split == "cost":
        weights = np.sqrt(1.0 / mean_g)
    elif split == "perf":
        weights = mean_d.copy()
    else:
        raise ValueError(f"split: unknown budget split {split!r} (known: {', '.join(SPLITS)})")
    total = weights.sum()
    if total <= 0:
        return np.full_like(mean_d, 1.0 / len(mean_d))
    return np.asarray(weights / total, dtype=float)


def total_budget(cost: np.ndarray, test: np.ndarray, multiplier: float) -> float:
    """The protocol's total budget: ``multiplier`` × the cost of sending every test query to the cheapest model.

    Raises:
        ValueError: a non-positive multiplier.
    """
    if multiplier <= 0:
        raise ValueError(f"multiplier: the budget multiplier must be positive, got {multiplier}")
    return float(multiplier * cost[test].sum(axis=0).min())


def budgets(problem: Problem, split: Split, name: str, multiplier: float) -> np.ndarray:
    """Per-model budgets (USD) of one run: the total budget divided by a named split.

    The split's means are taken over the whole data file, so the shares do not depend on the seed.

    Args:
        problem: the data.
        split: the history/test split (the total budget is set on its test stream).
        name: the split name, one of :data:`SPLITS`.
        multiplier: budget multiplier (1.0 in the protocol).

    Returns:
        Budgets of shape ``(M,)``.
    """
    shares = split_weights(problem.quality, problem.cost, name)
    return shares * total_budget(problem.cost, split.test, multiplier)


def parse_list(text: str, allowed: Sequence[str] | None = None, option: str = "value") -> list[str]:
    """Split a comma-separated option, checking each item against ``allowed``.

    Raises:
        ValueError: an empty list or an unknown item (the message names ``option``).
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{option}: give at least one value")
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise ValueError(f"{option}: unknown {unknown} (known: {', '.join(allowed)})")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    """Parse ``--seeds`` (comma-separated integers).

    Raises:
        ValueError: an empty list or a value that is not an integer.
    """
    try:
        return tuple(int(item) for item in parse_list(text, option="--seeds"))
    except ValueError as exc:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}") from exc
