"""Throughput of LiteLLM proxies with 1, 2, 4 … uvicorn workers on one host, sharing the Redis ledger.

Every worker count gets a fresh proxy (``litellm --num_workers N``) with the router callback over the shipped default
config's 11 deployments, a fresh ledger namespace (fresh budgets) and the RouterBench history on a shared Chroma server
(workers of one host must not write to one embedded store). The history is imported once: what the routers of one
worker count learn stays for the next (a few hundred records on top of the 3,164). The upstream is
the replay server in a process of its own. After a warm-up that builds every worker's router, a fixed number of
requests is sent with a fixed number in flight. Each worker count is also measured without the router (the same
deployments, LiteLLM's own ``simple-shuffle``), side by side: what the host itself allows.

Needs the LiteLLM integration (``integrations/litellm``); the core package imports this module only when proxies
are measured.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy

from llm_router_plugin.bench.scale import EMBEDDING_MODEL, ScaleOptions, draw_queries, scale_config, summarize
from llm_router_plugin.dataset import DataFile, import_history
from llm_router_plugin.testing import ChromaServer

#: The routed model group.
GROUP = "chat"
#: Outcomes written to the shared Chroma server once a second, as "Running several proxies" recommends.
HISTORY_BATCH_S = 1.0
#: The proxies' master key (loopback only).
MASTER_KEY = "sk-bench-scale"


def proxy_config(folder: Path, upstream_url: str, redis_url: str, chroma: ChromaServer, workers: int,
                 expected_queries: int, *, routed: bool = True, overrides: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The proxy config.yaml of one worker count: the default deployments in group :data:`GROUP` on the upstream.

    Args:
        folder: the routers' data folder (decision log).
        upstream_url: the replay upstream's base URL.
        redis_url: the shared Redis ledger.
        chroma: the shared Chroma server.
        workers: the worker count (names the ledger namespace).
        expected_queries: requests the budgets are paced over.
        routed: with the router callback; ``False``: the same deployments routed by LiteLLM alone.
        overrides: router settings that replace the defaults (e.g. a real ``embedding_model``).

    Returns:
        The config as a mapping (dump it with YAML).
    """
    base = scale_config(folder, redis_url, expected_queries, namespace=f"bench-scale-{workers}w")
    model_list: list[dict[str, Any]] = [
        {
            "model_name": GROUP,
            "litellm_params": {
                "model": f"openai/{d.model}", "api_base": f"{upstream_url}/v1", "api_key": "replay",
                "input_cost_per_token": (d.input_usd_per_mtok or 0.0) / 1e6,
                "output_cost_per_token": (d.output_usd_per_mtok or 0.0) / 1e6,
            },
            "model_info": {"id": d.name, "llm_router": {
                "usd_budget": d.usd_budget, "token_budget": d.token_budget, "window": d.window, "fallback": d.fallback,
            }},
        }
        for d in base.deployments
    ]
    settings = {
        "data_dir": str(folder), "ledger": base.ledger, "ledger_namespace": base.ledger_namespace,
        "embedding_model": base.embedding_model, "chroma_host": chroma.host, "chroma_port": chroma.port,
        "warmup_queries": base.warmup_queries,
        "expected_queries": base.expected_queries,
        "history_batch_s": HISTORY_BATCH_S,
        **(overrides or {}),
    }
    if not routed:
        for deployment in model_list:
            del deployment["model_info"]["llm_router"]
        return {"model_list": model_list, "general_settings": {"master_key": MASTER_KEY}}
    return {"model_list": model_list, "litellm_settings": {"callbacks": ["llm_router_litellm.proxy.router_callback"]},
            "callback_settings": {"llm_router": settings}, "general_settings": {"master_key": MASTER_KEY}}


def write_proxy_config(workdir: Path, data: DataFile, upstream_url: str, redis_url: str, chroma: ChromaServer,
                       workers: int, expected_queries: int, *, routed: bool = True,
                       overrides: Mapping[str, Any] | None = None) -> Path:
    """Write ``workdir/config.yaml`` (see :func:`proxy_config`) and, with the router, import ``data`` into its history.

    Args:
        workdir: the proxy's folder (created); the router's data goes to ``workdir/router``.
        data: the history the router reads (imported once: rows already stored are skipped).
        upstream_url: the replay upstream.
        redis_url: the shared Redis ledger.
        chroma: the shared Chroma server.
        workers: the worker count (names the ledger namespace).
        expected_queries: requests the budgets are paced over.
        routed: with the router callback; ``False``: LiteLLM alone.
        overrides: router settings that replace the defaults (see :func:`proxy_config`).

    Returns:
        The config file's path.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    config = proxy_config(workdir / "router", upstream_url, redis_url, chroma, workers, expected_queries, routed=routed,
                          overrides=overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if routed:
        adapter = LiteLLMAdapter.from_proxy_config(path)
        import_history(data, adapter.history, adapter.embedder)
    return path


async def send(url: str, warmup: Sequence[str], prompts: Sequence[str], concurrency: int
               ) -> tuple[list[float], float, int]:
    """Post the warm-up prompts, then (timed) every prompt, with ``concurrency`` requests in flight.

    One client, so that the measured requests reuse the warm-up's connections: the kernel spread those over the
    workers, and each worker has served (and built its router) before the clock starts.

    Returns:
        Each answered measured request's latency (ms), the wall time of the measured batch (s), and the number of
        measured requests that failed (a status other than 200, or no answer).
    """
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def ask(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal errors
        async with gate:
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/chat/completions", json={
                    "model": GROUP, "messages": [{"role": "user", "content": prompt}]})
            except httpx.HTTPError:
                errors += 1
                return
            if response.status_code != 200:
                errors += 1
                return
            latencies.append((time.perf_counter() - start) * 1e3)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"}) as client:
        await asyncio.gather(*(ask(client, p) for p in warmup))
        latencies.clear()
        errors = 0
        start = time.perf_counter()
        await asyncio.gather(*(ask(client, p) for p in prompts))
        return latencies, time.perf_counter() - start, errors


def measure_proxy(workdir: Path, data: DataFile, upstream_url: str, redis_url: str, chroma: ChromaServer,
                  workers: int, options: ScaleOptions, *, routed: bool = True) -> dict[str, Any]:
    """Start a proxy with ``workers`` workers, warm it up, send ``options.requests`` requests, stop it by its PID.

    Args:
        workdir: a fresh folder for the config, the router's data and the proxy's log.
        data: the history to import and the prompts to send.
        upstream_url: the replay upstream.
        redis_url: the shared Redis ledger.
        chroma: the shared Chroma server.
        workers: uvicorn workers.
        options: requests, concurrency, seed.
        routed: with the router; ``False``: LiteLLM alone, the same deployments and prompts.

    Returns:
        ``workers``, ``routed``, ``requests``, ``concurrency``, ``embedding``, ``requests_per_s``, ``latency_ms``
        (summary), ``errors``, ``warmup_requests`` and ``load_average`` (the host's, when the measured requests
        ended: other work on the host shows there).
    """
    warmup = 2 * options.concurrency  # enough connections that every worker builds its router before the clock
    prompts = [row.prompt for row in draw_queries(data.rows, warmup + options.requests, options.seed + workers)]
    path = write_proxy_config(workdir, data, upstream_url, redis_url, chroma, workers, warmup + options.requests,
                              routed=routed)
    with LiteLLMProxy(path, log=workdir / "proxy.log", num_workers=workers, startup_timeout=300) as proxy:
        latencies, seconds, errors = asyncio.run(send(proxy.url, prompts[:warmup], prompts[warmup:],
                                                      options.concurrency))
    return {"workers": workers, "routed": routed, "requests": options.requests, "concurrency": options.concurrency,
            "embedding": EMBEDDING_MODEL, "requests_per_s": len(latencies) / seconds,
            "latency_ms": summarize(latencies) if latencies else None, "errors": errors, "warmup_requests": warmup,
            "load_average": list(os.getloadavg())}
