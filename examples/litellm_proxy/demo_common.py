"""What the two LiteLLM examples share: config.yaml, the RouterBench prompts and history, and the final report.

``run_demo.py`` (the LiteLLM proxy) and ``../litellm_sdk.py`` (``litellm.Router`` in one process) route the same
RouterBench test prompts with the same config.yaml, so their reports compare directly.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from llm_router_litellm import LiteLLMAdapter, deployment_config

from llm_router_plugin import DataFile, bundled_path, read_data
from llm_router_plugin.cli import format_status
from llm_router_plugin.config import DeploymentConfig
from llm_router_plugin.dataset import DataRow
from llm_router_plugin.embedding_cache import CACHE_FILE

CONFIG = Path(__file__).with_name("config.yaml")
#: The routed model group of config.yaml.
GROUP = "chat"


@dataclass(frozen=True)
class Served:
    """One answered prompt: the data row, the deployment that answered and the router's phase."""

    row: DataRow
    deployment: str
    phase: str


def load_config(api_base: str, data_dir: Path, embedding_model: str | None, queries: int) -> dict[str, Any]:
    """config.yaml with every deployment pointed at ``api_base``, the router's data in ``data_dir``, and the budgets
    scaled from the config's ``expected_queries`` to ``queries`` (a short run gets a proportionally small budget)."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    settings = config["callback_settings"]["llm_router"]
    scale = queries / settings["expected_queries"]
    settings["expected_queries"] = queries
    for deployment in config["model_list"]:
        deployment["litellm_params"]["api_base"] = api_base
        budget = deployment.get("model_info", {}).get("llm_router", {})
        if "usd_budget" in budget:
            budget["usd_budget"] = round(budget["usd_budget"] * scale, 6)
    settings["data_dir"] = str(data_dir)
    # The embedding cache of the folder above: for the default --data-dir, .llm-router's, which `llm-router import`
    # (make demo) fills, so the demo embeds none of its texts again.
    settings["embedding_cache"] = str(data_dir.parent / CACHE_FILE)
    if embedding_model:
        settings["embedding_model"] = embedding_model
    return config


def routerbench(queries: int, seed: int = 0) -> tuple[DataFile, list[DataRow]]:
    """RouterBench's train split (the history) and ``queries`` prompts of its test split, drawn with ``seed``."""
    data = read_data(bundled_path())
    test = [row for row in data.rows if row.split == "test"]
    if not 1 <= queries <= len(test):
        raise ValueError(f"--queries: must be in [1, {len(test)}], got {queries}")
    history = DataFile(data.path, data.models, [row for row in data.rows if row.split == "train"], {})
    return history, random.Random(seed).sample(test, queries)


def fresh_data_dir(data_dir: Path) -> None:
    """Empty the demo's data folder: every run starts with fresh budgets and the same history, so runs compare.

    The history is imported again each run, in seconds: the shipped sample's vectors come from the package's vector
    pack (or, for another embedder, from the embedding cache one folder up), so no prompt is embedded twice.
    """
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)


def prepare(adapter: LiteLLMAdapter, history: DataFile) -> None:
    """Import the history into the routed group's store."""
    router = adapter.router(GROUP)
    assert router is not None, f"config.yaml routes no group {GROUP!r}"
    report = router.import_history(history)
    print(f"history: {report.added} RouterBench training prompts imported in {report.seconds:.1f} s")


async def settled(adapter: LiteLLMAdapter, timeout: float = 30.0) -> None:
    """Wait until every decision's outcome is recorded (LiteLLM logs them just after answering)."""
    router = adapter.router(GROUP)
    assert router is not None, f"config.yaml routes no group {GROUP!r}"
    deadline = time.monotonic() + timeout
    while any(any(d.reserved.values()) for d in router.status().deployments) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def routed(config: dict[str, Any]) -> list[DeploymentConfig]:
    """The router's view of the deployments of the routed group of a LiteLLM config."""
    return [deployment_config(entry) for entry in config["model_list"] if entry["model_name"] == GROUP]


def profiles(config: dict[str, Any]) -> dict[str, str]:
    """Deployment id → model profile, for the routed group of a LiteLLM config."""
    return {d.name: d.model for d in routed(config)}


def budgets(config: dict[str, Any]) -> dict[str, float]:
    """Deployment id → USD budget, for the routed group of a LiteLLM config."""
    return {d.name: d.usd_budget for d in routed(config) if d.usd_budget is not None}


def line(i: int, served: Served, profile: dict[str, str]) -> str:
    """One answered prompt, as printed while the demo runs."""
    return (f"{i:>4}  {served.row.task:<14} → {served.deployment:<16} {served.phase:<8} "
            f"quality {quality(served, profile):g}")


def report(adapter: LiteLLMAdapter, served: list[Served], profile: dict[str, str]) -> str:
    """Where the prompts went, the spend per deployment against its budget, and the quality served."""
    router = adapter.router(GROUP)
    assert router is not None, f"config.yaml routes no group {GROUP!r}"
    by_deployment: dict[str, list[Served]] = defaultdict(list)
    for item in served:
        by_deployment[item.deployment].append(item)
    lines = ["", f"{'deployment':<18} {'queries':>7}  {'by phase':<34} {'mean quality':>12}"]
    for name in profile:
        items = by_deployment.get(name, [])
        phases = ", ".join(f"{p} {n}" for p, n in sorted(Counter(i.phase for i in items).items())) or "-"
        mean = sum(quality(i, profile) for i in items) / len(items) if items else float("nan")
        lines.append(f"{name:<18} {len(items):>7}  {phases:<34} {mean:>12.3f}")
    total = sum(quality(i, profile) for i in served)
    lines += ["", format_status(router.status()), "",
              f"served quality: {total:g} of {len(served)} prompts (mean {total / max(1, len(served)):.3f}); "
              "every prompt on one model would score:",
              "  " + ", ".join(f"{p} {everywhere(served, p):.3f}" for p in profile.values())]
    return "\n".join(lines)


def quality(item: Served, profile: dict[str, str]) -> float:
    """The recorded quality of the answer the prompt got (0 where RouterBench has none)."""
    return item.row.outcomes[profile[item.deployment]].quality or 0.0


def everywhere(served: list[Served], model: str) -> float:
    """Mean quality had every prompt gone to ``model``."""
    return sum(item.row.outcomes[model].quality or 0.0 for item in served) / max(1, len(served))
