"""The router's main job, in its real setting: a LiteLLM proxy under per-deployment budgets, against LiteLLM alone.

Starts the replay upstream (an OpenAI-compatible server answering as the RouterBench models did, offline) and a real
``litellm`` proxy with this folder's config.yaml: group ``chat`` has four deployments, each with a USD budget. The
same RouterBench test prompts go through it once routed by the router, then once per LiteLLM strategy
(simple-shuffle, cost-based-routing, usage-based-routing-v2) with the same budgets enforced by LiteLLM's own
deployment budget limiter. It prints one table (quality served, requests served and refused, spend per deployment
against its budget) and writes a plot of spend over time. Servers listen on free ports of 127.0.0.1 and are stopped
on the way out. Each run starts from an empty ``--data-dir`` (fresh budgets, the same history), so runs compare.

Run::

    python examples/litellm_proxy/run_demo.py                        # 300 prompts, all-MiniLM-L6-v2 (make demo)
    python examples/litellm_proxy/run_demo.py --queries 60 --embedding-model hashing-256   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

# Offline and quiet, here and in the proxy started below (it inherits the environment).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import yaml
from comparison import STRATEGIES, Outcome, plot, send, strategy_config, table
from demo_common import budgets, fresh_data_dir, load_config, prepare, profiles, routerbench
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy

from llm_router_plugin.dataset import DataRow
from llm_router_plugin.replay import ReplayBook, ReplayServer


def run(strategy: str, config: dict, data_dir: Path, prompts: list[DataRow], concurrency: int) -> Outcome:
    """Start a proxy with the strategy's config, send every prompt, stop it."""
    path = data_dir / f"config-{strategy}.yaml"
    path.write_text(yaml.safe_dump(strategy_config(config, strategy), sort_keys=False), encoding="utf-8")
    started = time.monotonic()
    with LiteLLMProxy(path, log=data_dir / f"proxy-{strategy}.log") as proxy:
        answers = asyncio.run(send(proxy.url, config["general_settings"]["master_key"], prompts, concurrency))
    outcome = Outcome(strategy, answers, profiles(config), budgets(config))
    print(f"{strategy:<24} {outcome.served} served, {len(answers) - outcome.served} refused, "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="RouterBench test prompts to send")
    parser.add_argument("--embedding-model", default=None, help="e.g. hashing-256 (default: all-MiniLM-L6-v2)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, from: "
                        + ", ".join(STRATEGIES))
    parser.add_argument("--data-dir", type=Path, default=Path(".llm-router/demo"),
                        help="history, ledgers, each strategy's config.yaml and proxy log, the plot (emptied first)")
    args = parser.parse_args()

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := sorted(set(strategies) - set(STRATEGIES)):
        parser.error(f"--strategies: unknown {unknown}; choose from {', '.join(STRATEGIES)}")
    data_dir = args.data_dir.resolve()
    fresh_data_dir(data_dir)
    history, prompts = routerbench(args.queries)
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        config = load_config(upstream.url, data_dir, args.embedding_model, args.queries)
        (data_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        prepare(LiteLLMAdapter.from_proxy_config(data_dir / "config.yaml"), history)
        print(f"sending {len(prompts)} prompts to each strategy, {args.concurrency} in flight …", flush=True)
        outcomes = [run(strategy, config, data_dir, prompts, args.concurrency) for strategy in strategies]
    finally:
        upstream.stop()
    figure = data_dir / "demo.png"
    plot(outcomes, figure)
    print("\n" + table(outcomes))
    print(f"\nplot: {figure}")
    config_path = data_dir / "config.yaml"
    print(f"next: llm-router report --proxy-config {config_path} --plot report.png   (what the router spent and "
          "decided)\n      make bench   (the router against PORT and baselines on replayed outcomes)\n"
          "      python examples/langchain_chatbot.py   (a LangChain chatbot on the router)\n"
          "      README, \"Add a model\"   (route to a model the history does not know)")


if __name__ == "__main__":
    main()
