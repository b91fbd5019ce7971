"""What a query costs on a deployment: prices, and the usage estimate and hold of one query.

A query's cost on a deployment is *its own* prompt tokens × the input price plus its estimated completion tokens ×
the output price; the neighbours' recorded costs are not the estimate (their prompts had other lengths). Prices come
from, first found wins:

1. the deployment's configured ``input_usd_per_mtok`` / ``output_usd_per_mtok`` (integrations fill these from their
   own price maps, e.g. LiteLLM's);
2. a per-token rate fitted on history: the profile's mean recorded cost ÷ its mean recorded tokens.

A deployment with a USD budget and neither is refused at start: its spend could not be estimated or enforced.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_router_plugin.config import DeploymentConfig
from llm_router_plugin.history import FIELDS

_PROMPT, _COMPLETION, _COST = (FIELDS.index(f) for f in ("prompt_tokens", "completion_tokens", "cost_usd"))


@dataclass(frozen=True)
class Price:
    """A deployment's price.

    Attributes:
        input_usd_per_mtok: USD per million prompt tokens.
        output_usd_per_mtok: USD per million completion tokens.
        source: where it came from (``"config"`` or ``"history"``), shown in status.
    """

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: str = "config"

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD of a call with these token counts."""
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


def read_prices(path: str | Path) -> dict[str, Price]:
    """Read per-model prices: ``{model: {"input_usd_per_mtok": x, "output_usd_per_mtok": y}, ...}``.

    Args:
        path: the JSON file (other keys per model are ignored).

    Returns:
        Model → price.

    Raises:
        ValueError: the file is not such a mapping or a price is missing or negative.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"prices: {path} must map each model to its prices, got {type(data).__name__}")
    prices = {}
    for model, entry in data.items():
        try:
            price = Price(float(entry["input_usd_per_mtok"]), float(entry["output_usd_per_mtok"]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"prices: {model!r} needs numeric 'input_usd_per_mtok' and 'output_usd_per_mtok'"
            ) from None
        if not all(math.isfinite(v) and v >= 0 for v in (price.input_usd_per_mtok, price.output_usd_per_mtok)):
            raise ValueError(f"prices: {model!r} needs finite, non-negative prices")
        prices[model] = price
    return prices


def completion_tokens_from_cost(cost_usd: float, prompt_tokens: int, price: Price) -> int | None:
    """The completion tokens a recorded cost implies at a price (for data that records cost but no token counts).

    Args:
        cost_usd: the call's recorded cost.
        prompt_tokens: its prompt tokens (counted or estimated).
        price: the model's price.

    Returns:
        At least 1 (a one-letter answer's cost is within rounding of the prompt's), or ``None`` for a free output.
    """
    if price.output_usd_per_mtok <= 0:
        return None
    output_usd = cost_usd - prompt_tokens * price.input_usd_per_mtok / 1e6
    return max(1, round(output_usd * 1e6 / price.output_usd_per_mtok))


def configured_price(deployment: DeploymentConfig) -> Price | None:
    """The deployment's configured price, or ``None`` if it names none.

    Raises:
        ValueError: the deployment has a USD budget and names only one side of its price (the other would count as
            free, and that part of its spend would go unenforced).
    """
    sides = (deployment.input_usd_per_mtok, deployment.output_usd_per_mtok)
    if sides == (None, None):
        return None
    if None in sides and deployment.usd_budget is not None:
        raise ValueError(f"deployments.{deployment.name}: a usd_budget needs both input_usd_per_mtok and "
                         "output_usd_per_mtok (set 0 for a side that is free)")
    return Price(sides[0] or 0.0, sides[1] or 0.0)


def history_price(means: np.ndarray) -> Price | None:
    """A blended per-token rate from a profile's mean outcome (see :data:`~llm_router_plugin.history.FIELDS`).

    Records without completion tokens count as prompt-only: the rate then errs high, which is the safe side for a
    budget.

    Args:
        means: one profile's mean outcome fields.

    Returns:
        The rate as a price with equal input and output sides, or ``None`` if history lacks cost or tokens.
    """
    cost, prompt, completion = means[_COST], means[_PROMPT], means[_COMPLETION]
    tokens = prompt + (completion if math.isfinite(completion) else 0.0)
    if not (math.isfinite(cost) and math.isfinite(tokens)) or tokens <= 0:
        return None
    rate = cost / tokens * 1e6
    return Price(rate, rate, source="history")


def resolve_prices(
    deployments: Sequence[DeploymentConfig], profile_means: Callable[[list[str]], np.ndarray]
) -> list[Price | None]:
    """Every deployment's price, from its config, else from history.

    Args:
        deployments: the deployments.
        profile_means: returns each profile's mean outcome (read only when some deployment has no configured price).

    Returns:
        One price per deployment (``None`` for a deployment without a USD budget and without any price source).

    Raises:
        ValueError: a deployment has a USD budget and no price source (the message names it).
    """
    prices = [configured_price(d) for d in deployments]
    missing = [i for i, price in enumerate(prices) if price is None]
    if not missing:
        return prices
    means = profile_means([deployments[i].model for i in missing])
    for row, i in enumerate(missing):
        prices[i] = history_price(means[row])
        if prices[i] is None and deployments[i].usd_budget is not None:
            raise ValueError(
                f"deployments.{deployments[i].name}.usd_budget: no price for this deployment, so its USD spend "
                f"cannot be estimated; set input_usd_per_mtok and output_usd_per_mtok, or import history with costs "
                f"and token counts for model {deployments[i].model!r}"
            )
    return prices


def usage_estimate(
    price: Price | None, prompt_tokens: int, prompt_counted: bool, completion: float, completion_high: float,
    margin: float, max_tokens: int | None, choices: int = 1,
) -> dict[str, float]:
    """One query's estimated usage on a deployment, what to hold for it, and the headroom it needs.

    The estimate (``tokens``, ``usd``) drives the choice. The hold (``tokens_hold``, ``usd_hold``) is what the budget
    reserves until the call's actual usage is recorded: the prompt and the high side of the completion (what the
    costliest neighbour used). The headroom (``tokens_need``, ``usd_need``) is what the budget must have left for the
    call to be admitted: the hold with the margin on what is estimated (the completion, and the prompt when nobody
    counted its tokens). Concurrent calls thus reserve no more than they are likely to use, while a budget's last
    calls keep a margin against a call that costs more than its neighbours. ``max_tokens`` caps the completion in all
    three, since the call cannot exceed it.

    Args:
        price: the deployment's price (``None``: USD is not estimated).
        prompt_tokens: the query's prompt tokens.
        prompt_counted: whether ``prompt_tokens`` was counted by a tokenizer (else it is an estimate).
        completion: estimated completion tokens.
        completion_high: the high side of the completion estimate.
        margin: the headroom margin (1.0 = the budget must have twice the estimated part left).
        max_tokens: the request's completion limit per choice, if any.
        choices: completions the request asks for (OpenAI's ``n``): each is billed.

    Returns:
        ``tokens``, ``usd``, ``tokens_hold``, ``usd_hold``, ``tokens_need``, ``usd_need``.
    """
    completion_hold = max(completion_high, completion)
    completion_need = completion_hold * (1.0 + margin)
    if max_tokens is not None:
        completion, completion_hold, completion_need = (min(c, max_tokens)
                                                        for c in (completion, completion_hold, completion_need))
    completion, completion_hold, completion_need = (c * choices for c in (completion, completion_hold, completion_need))
    prompt_need = prompt_tokens if prompt_counted else prompt_tokens * (1.0 + margin)
    return {
        "tokens": prompt_tokens + completion,
        "usd": price.cost(prompt_tokens, completion) if price else 0.0,
        "tokens_hold": prompt_tokens + completion_hold,
        "usd_hold": price.cost(prompt_tokens, completion_hold) if price else 0.0,
        "tokens_need": prompt_need + completion_need,
        "usd_need": price.cost(prompt_need, completion_need) if price else 0.0,
    }
