"""``litellm.Router`` with the budget-aware router as its routing strategy, in one Python process, offline.

The same deployments and router settings as the proxy example (``litellm_proxy/config.yaml``), the same RouterBench
test prompts; the upstream is the replay server, started in this process. For every prompt the script prints the
deployment that answered (``metadata["llm_router"]`` holds the decision), then the spend of every deployment against
its budget and the quality served. Each run starts from an empty ``--data-dir`` (fresh budgets, the same history).

Run::

    python examples/litellm_sdk.py                                     # 200 prompts, all-MiniLM-L6-v2 embeddings
    python examples/litellm_sdk.py --queries 50 --embedding-model hashing-256       # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

# Offline and quiet, before litellm, chromadb, onnxruntime or the hub client are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# The helpers both LiteLLM examples share live beside the proxy example's config.yaml.
sys.path.insert(0, str(Path(__file__).with_name("litellm_proxy")))

import litellm
from demo_common import (
    GROUP,
    Served,
    fresh_data_dir,
    line,
    load_config,
    prepare,
    profiles,
    report,
    routerbench,
    settled,
)
from llm_router_litellm import RoutingStrategy

from llm_router_plugin.replay import ReplayBook, ReplayServer


async def run(queries: int, embedding_model: str | None, data_dir: Path) -> None:
    fresh_data_dir(data_dir)
    history, prompts = routerbench(queries)
    upstream = ReplayServer(ReplayBook.from_files()).start()
    strategy: RoutingStrategy | None = None
    try:
        config = load_config(upstream.url, data_dir, embedding_model, queries)
        router = litellm.Router(model_list=config["model_list"])
        strategy = RoutingStrategy.install(router, config["callback_settings"]["llm_router"])
        prepare(strategy.adapter, history)
        profile, served = profiles(config), []
        for i, row in enumerate(prompts, start=1):
            metadata: dict[str, Any] = {}  # the router notes its decision here
            response = await router.acompletion(model=GROUP, messages=[{"role": "user", "content": row.prompt}],
                                                metadata=metadata)
            served.append(Served(row, response._hidden_params["model_id"], metadata["llm_router"]["phase"]))
            print(line(i, served[-1], profile))
        await settled(strategy.adapter)
        print(report(strategy.adapter, served, profile))
    finally:
        if strategy is not None:
            strategy.uninstall()
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="RouterBench test prompts to send")
    parser.add_argument("--embedding-model", default=None, help="e.g. hashing-256 (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", type=Path, default=Path(".llm-router/litellm-sdk-demo"),
                        help="history and ledgers")
    args = parser.parse_args()
    asyncio.run(run(args.queries, args.embedding_model, args.data_dir.resolve()))


if __name__ == "__main__":
    main()
