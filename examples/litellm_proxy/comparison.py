"""What ``run_demo.py`` compares: one proxy config run by the router and by LiteLLM's own strategies.

Every strategy gets the same config.yaml, the same prompts in the same order and the same per-deployment USD budgets:
the router enforces them itself (``model_info.llm_router``); LiteLLM alone enforces them with its deployment budget
limiter (``litellm_params.max_budget`` and ``budget_duration``), which takes a deployment out once its recorded spend
reaches the budget. A request no deployment may serve is refused (HTTP 429) and scores 0.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from demo_common import GROUP

from llm_router_plugin.dataset import DataRow

#: The router, then LiteLLM's strategies that apply to a group of deployments with prices and budgets.
STRATEGIES = ("llm-router", "simple-shuffle", "cost-based-routing", "usage-based-routing-v2")
#: LiteLLM's budget window for the strategies without the router: longer than any demo run ("total").
LITELLM_BUDGET_DURATION = "30d"


@dataclass(frozen=True)
class Answer:
    """What one prompt got from the proxy.

    Attributes:
        row: the RouterBench row (its recorded quality per model).
        deployment: the ``model_info.id`` that answered; ``None`` if refused.
        phase: the router's phase (``x-llm-router-phase``), ``None`` without the router.
        cost: USD the proxy charged (``x-litellm-response-cost``).
        at: seconds since the strategy's first prompt.
        error: why it was refused (status and the start of the message).
    """

    row: DataRow
    deployment: str | None
    phase: str | None
    cost: float
    at: float
    error: str | None = None


def strategy_config(config: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The proxy config of one strategy: the router's unchanged, LiteLLM's without the router callback.

    Args:
        config: the router's proxy config (deployments with ``model_info.llm_router`` budgets).
        strategy: an entry of :data:`STRATEGIES`.

    Returns:
        A new config; for a LiteLLM strategy each budgeted deployment carries its USD budget as LiteLLM's
        ``max_budget`` instead.
    """
    config = copy.deepcopy(config)
    config.setdefault("router_settings", {})["num_retries"] = 0  # a refusal is an answer here, not a retry
    if strategy == "llm-router":
        return config
    config["router_settings"]["routing_strategy"] = strategy
    config.pop("callback_settings", None)
    config["litellm_settings"].pop("callbacks", None)
    for deployment in config["model_list"]:
        settings = deployment["model_info"].pop("llm_router", None) or {}
        if settings.get("usd_budget") is not None:
            deployment["litellm_params"]["max_budget"] = settings["usd_budget"]
            deployment["litellm_params"]["budget_duration"] = LITELLM_BUDGET_DURATION
    return config


async def send(url: str, key: str, prompts: Sequence[DataRow], concurrency: int) -> list[Answer]:
    """Send every prompt to group :data:`GROUP`, ``concurrency`` at a time, in order.

    Args:
        url: the proxy's base URL.
        key: its master key.
        prompts: the rows whose prompts to send.
        concurrency: requests in flight at once.

    Returns:
        One answer per prompt, in the order of ``prompts``.
    """
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def ask(client: httpx.AsyncClient, row: DataRow) -> Answer:
        async with gate:
            response = await client.post("/v1/chat/completions", json={
                "model": GROUP, "messages": [{"role": "user", "content": row.prompt}]})
        at = time.monotonic() - started
        if response.status_code != 200:
            return Answer(row, None, None, 0.0, at, f"{response.status_code} {response.text[:160]}")
        headers = response.headers
        return Answer(row, headers["x-litellm-model-id"], headers.get("x-llm-router-phase"),
                      float(headers.get("x-litellm-response-cost") or 0.0), at)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        return list(await asyncio.gather(*(ask(client, row) for row in prompts)))


@dataclass(frozen=True)
class Outcome:
    """One strategy's run, summed up.

    Attributes:
        strategy: the strategy.
        answers: every prompt's answer, in the order sent.
        profile: deployment id → the RouterBench model it serves.
        budgets: deployment id → USD budget.
    """

    strategy: str
    answers: list[Answer]
    profile: dict[str, str]
    budgets: dict[str, float]

    def quality(self, answer: Answer) -> float:
        """The recorded quality of the answer a prompt got (0 if refused or not scored)."""
        if answer.deployment is None:
            return 0.0
        return answer.row.outcomes[self.profile[answer.deployment]].quality or 0.0

    @property
    def served(self) -> int:
        """Prompts answered."""
        return sum(1 for a in self.answers if a.deployment is not None)

    @property
    def mean_quality(self) -> float:
        """Mean quality over every prompt sent (a refused prompt scores 0)."""
        return sum(self.quality(a) for a in self.answers) / max(1, len(self.answers))

    def spend(self) -> dict[str, float]:
        """USD charged per deployment."""
        spent: dict[str, float] = defaultdict(float)
        for answer in self.answers:
            if answer.deployment is not None:
                spent[answer.deployment] += answer.cost
        return {name: spent[name] for name in self.profile}

    def over_budget(self) -> dict[str, float]:
        """USD spent beyond each deployment's budget, where it was."""
        return {name: spent - self.budgets[name] for name, spent in self.spend().items()
                if name in self.budgets and spent > self.budgets[name] + 1e-12}


def table(outcomes: Sequence[Outcome]) -> str:
    """The comparison: quality served, requests served and refused, spend per deployment against its budget."""
    names = list(outcomes[0].profile)
    budgets = outcomes[0].budgets
    lines = [f"{'strategy':<24} {'quality':>7} {'served':>7} {'refused':>8} {'spend $':>8}  over budget",
             "-" * 78]
    for o in outcomes:
        over = ", ".join(f"{n} +${v:.4f}" if v >= 1e-4 else f"{n} +${v:.1e}"  # a last call's cents, still shown
                         for n, v in o.over_budget().items()) or "none"
        lines.append(f"{o.strategy:<24} {o.mean_quality:>7.3f} {o.served:>7} {len(o.answers) - o.served:>8} "
                     f"{sum(o.spend().values()):>8.4f}  {over}")
    lines += ["", "spend per deployment, USD (budget):",
              f"{'':<24}" + "".join(f"{n + f' ({budgets.get(n, 0):g})':>24}" for n in names)]
    for o in outcomes:
        spend = o.spend()
        lines.append(f"{o.strategy:<24}" + "".join(f"{spend[n]:>24.4f}" for n in names))
    lines += ["", "quality: mean recorded RouterBench score of the answers, over every prompt sent (refused = 0)"]
    return "\n".join(lines)


def plot(outcomes: Sequence[Outcome], path: Path) -> None:
    """Spend over time per deployment as a share of its budget, one panel per strategy; quality per strategy; where
    the prompts went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(3, (len(outcomes) + 3) // 2)
    fig, grid = plt.subplots(2, columns, figsize=(4.4 * columns, 7.6))
    axes = list(grid.flat)
    names = list(outcomes[0].profile)
    for ax, o in zip(axes, outcomes, strict=False):
        _spend_panel(ax, o, names)
    axes[0].legend(fontsize=7, loc="upper left")
    _quality_panel(axes[len(outcomes)], outcomes)
    _traffic_panel(axes[len(outcomes) + 1], outcomes, names)
    for ax in axes[len(outcomes) + 2 :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _spend_panel(ax: Any, outcome: Outcome, names: Sequence[str]) -> None:
    """Each deployment's cumulative spend over the requests, in percent of its budget (the dashed line)."""
    for i, name in enumerate(names):
        budget = outcome.budgets.get(name)
        if not budget:  # no USD budget: no share of one to draw
            continue
        spent, xs, ys = 0.0, [0], [0.0]
        for n, answer in enumerate(outcome.answers, start=1):
            if answer.deployment == name:
                spent += answer.cost
                xs.append(n)
                ys.append(100 * spent / budget)
        xs.append(len(outcome.answers))
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", color=f"C{i}", label=name)
    ax.axhline(100, color="black", linestyle="--", linewidth=0.9)
    refused = [n for n, a in enumerate(outcome.answers, start=1) if a.deployment is None]
    if refused:
        ax.plot(refused, [2] * len(refused), "|", color="black", label="refused")
    ax.set_ylim(0, max(120, ax.get_ylim()[1]))
    ax.set_title(outcome.strategy, fontsize=10)
    ax.set_xlabel("request")
    ax.set_ylabel("spend, % of budget")
    ax.grid(alpha=0.3)


def _quality_panel(ax: Any, outcomes: Sequence[Outcome]) -> None:
    """Mean quality served per strategy, with its refusals."""
    ax.bar(range(len(outcomes)), [o.mean_quality for o in outcomes],
           color=["C4" if o.strategy == "llm-router" else "0.6" for o in outcomes])
    for i, o in enumerate(outcomes):
        ax.text(i, o.mean_quality, f"{o.mean_quality:.3f}\n{len(o.answers) - o.served} refused", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(outcomes)), [o.strategy for o in outcomes], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_title("quality served (refused = 0)", fontsize=10)


def _traffic_panel(ax: Any, outcomes: Sequence[Outcome], names: Sequence[str]) -> None:
    """Where each strategy sent the prompts: a stacked bar of prompts per deployment, refusals on top."""
    bottom = [0] * len(outcomes)
    for i, name in enumerate([*names, None]):
        counts = [sum(1 for a in o.answers if a.deployment == name) for o in outcomes]
        ax.bar(range(len(outcomes)), counts, bottom=bottom, color=f"C{i}" if name else "black",
               label=name or "refused")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(range(len(outcomes)), [o.strategy for o in outcomes], rotation=20, fontsize=8)
    ax.set_ylim(0, max(bottom) * 1.4)  # room for the legend above the bars
    ax.set_title("prompts per deployment", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper center")
