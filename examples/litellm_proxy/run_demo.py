"""The LiteLLM proxy with the budget-aware router, offline, on real RouterBench prompts.

Starts the replay upstream (the server behind ``llm-router replay-server``) and ``litellm --config`` with this
folder's config.yaml on free ports of 127.0.0.1, sends RouterBench test prompts through the OpenAI client, prints
which deployment answered each (the ``x-litellm-model-id`` and ``x-llm-router-*`` response headers), then the spend of
every deployment against its budget and the quality served; it stops both servers on the way out. Each run starts
with fresh budgets; the imported history is kept in ``--data-dir``.

Run::

    python examples/litellm_proxy/run_demo.py                       # 200 prompts, all-MiniLM-L6-v2 embeddings
    python examples/litellm_proxy/run_demo.py --queries 50 --embedding-model hashing-256   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

# Offline and quiet, here and in the proxy started below (it inherits the environment).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import openai
import yaml
from demo_common import GROUP, Served, line, load_config, prepare, profiles, report, routerbench, settled
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy

from llm_router_plugin.replay import ReplayBook, ReplayServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="RouterBench test prompts to send")
    parser.add_argument("--embedding-model", default=None, help="e.g. hashing-256 (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", type=Path, default=Path(".llm-router/litellm-proxy-demo"),
                        help="history, ledgers, the effective config.yaml and the proxy's log")
    args = parser.parse_args()

    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    history, prompts = routerbench(args.queries)
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        config = load_config(upstream.url, data_dir, args.embedding_model)
        config_path = data_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        prepare(LiteLLMAdapter.from_proxy_config(config_path), history)
        print(f"starting the LiteLLM proxy (log: {data_dir / 'proxy.log'}) …")
        with LiteLLMProxy(config_path) as proxy:
            client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=config["general_settings"]["master_key"])
            profile, served = profiles(config), []
            for i, row in enumerate(prompts, start=1):
                raw = client.chat.completions.with_raw_response.create(
                    model=GROUP, messages=[{"role": "user", "content": row.prompt}])
                served.append(Served(row, raw.headers["x-litellm-model-id"], raw.headers["x-llm-router-phase"]))
                print(line(i, served[-1], profile))
            # The proxy's router wrote the ledger and the learned weights: read them with a router opened now.
            adapter = LiteLLMAdapter.from_proxy_config(config_path)
            asyncio.run(settled(adapter))
        print(report(adapter, served, profile))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
