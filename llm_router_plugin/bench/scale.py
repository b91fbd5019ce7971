"""The scale-out cost of the router: route + reserve latency on SQLite vs Redis, and proxy throughput per worker count.

Latency: two routers with the same config (the shipped default's 11 deployments, each with a daily USD and token
budget) over the same RouterBench history, one on ``ledger: sqlite`` and one on a private ``redis-server``, route
the same queries and record the replay upstream's usage for them. The queries' embeddings are computed before the
clock starts (a deterministic hashing embedder of MiniLM's dimension), so the times are the router's and its
ledger's, not the embedding model's. The two ledgers take turns in blocks, the first of each pair alternating, so
that machine noise hits both alike.

Throughput (:mod:`llm_router_plugin.bench.scale_proxy`): LiteLLM proxies with 1, 2, 4 ... uvicorn workers sharing
the Redis ledger and a Chroma server, in front of the replay upstream.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_router_plugin.bench.replay import CachedEmbedder
from llm_router_plugin.config import RouterConfig
from llm_router_plugin.dataset import DataFile, DataRow, bundled_path, import_history, read_data
from llm_router_plugin.embedding import HashingEmbedder
from llm_router_plugin.errors import BudgetExhaustedError
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.profiles import default_profile_set
from llm_router_plugin.replay import ReplayBook
from llm_router_plugin.router import Router
from llm_router_plugin.testing import ChromaServer, RedisServer, ReplayUpstream

#: The ledgers compared, in table order.
LEDGERS = ("sqlite", "redis")
#: What is timed per decision: ``route()`` alone, and ``route()`` plus ``record()``.
STEPS = ("route", "route_record")
#: Tokens per deployment per day, added to the shipped default config's USD budgets.
TOKEN_BUDGET = 500_000
#: The embedder of the latency run and of the proxies: MiniLM's dimension, no model time.
EMBEDDING_MODEL = "hashing-384"
#: The latency target: Redis route + record p50 ≤ this × SQLite's.
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class ScaleOptions:
    """What ``llm-router bench-scale`` measures.

    Attributes:
        decisions: decisions (route + record) per ledger.
        block: decisions in a row on one ledger before the other takes its turn.
        ledgers: the ledgers of the latency run (see :data:`LEDGERS`).
        workers: proxy worker counts of the throughput run (empty: no throughput run).
        requests: requests per worker count.
        concurrency: requests in flight at once.
        seed: draws the queries.
    """

    decisions: int = 2000
    block: int = 50
    ledgers: tuple[str, ...] = LEDGERS
    workers: tuple[int, ...] = (1, 2, 4)
    requests: int = 400
    concurrency: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("decisions", "block", "requests", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not self.ledgers or any(ledger not in LEDGERS for ledger in self.ledgers):
            raise ValueError(f"ledgers: give some of {', '.join(LEDGERS)}, got {list(self.ledgers)}")
        if any(w < 1 for w in self.workers):
            raise ValueError(f"workers: every worker count must be at least 1, got {list(self.workers)}")


@dataclass
class Timings:
    """Per-decision times of one ledger, in milliseconds: step → list of samples.

    Attributes:
        wall: wall-clock times.
        cpu: CPU times of this process (every thread; a Redis server's own CPU is not in them).
        refused: decisions refused for budget (their ``route()`` time is in the samples, there is no record).
    """

    wall: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in STEPS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in STEPS})
    refused: int = 0


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """The percentiles reported for a list of times.

    Args:
        samples: the times (any unit; the summary keeps it).

    Returns:
        ``n``, ``mean``, ``p50``, ``p90`` and ``p99`` (linear interpolation between the closest ranks).

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("samples: nothing to summarise")
    values = np.asarray(samples, dtype=float)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"n": float(len(values)), "mean": float(values.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99)}


def scale_config(data_dir: Path, ledger: str, expected_queries: int, namespace: str = "bench-scale") -> RouterConfig:
    """The shipped default config (11 RouterBench deployments, daily USD budgets) with token budgets, on ``ledger``.

    Args:
        data_dir: the router's folder (history, decision log and, for ``sqlite``, the ledger).
        ledger: ``"sqlite"`` or a ``redis://`` URL.
        expected_queries: the decisions the budgets are paced over.
        namespace: the Redis ledger's key prefix.

    Returns:
        The config (embedder :data:`EMBEDDING_MODEL`).
    """
    raw = yaml.safe_load(bundled_path("default_router.yaml").read_text(encoding="utf-8"))
    for deployment in raw["deployments"]:
        deployment["token_budget"] = TOKEN_BUDGET
    raw.update(data_dir=str(data_dir), ledger=ledger, ledger_namespace=namespace, embedding_model=EMBEDDING_MODEL,
               expected_queries=expected_queries)
    return RouterConfig.from_dict(raw)


def draw_queries(rows: Sequence[DataRow], n: int, seed: int) -> list[DataRow]:
    """``n`` rows in a seeded random order, every row once before any repeats.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("rows: no queries to draw from")
    order = list(rows)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def block_order(blocks: int, ledgers: Sequence[str]) -> list[str]:
    """Which ledger runs each turn: every block on every ledger, the first of each round alternating (A B, B A …)."""
    return [ledger for b in range(blocks) for ledger in (ledgers if b % 2 == 0 else list(reversed(ledgers)))]


def open_router(data: DataFile, embedder: CachedEmbedder, config: RouterConfig) -> Router:
    """A router on ``config`` whose (embedded Chroma) history holds every row of ``data``."""
    history = ChromaHistory.from_config(config)
    import_history(data, history, embedder)
    profile_set = default_profile_set().for_embedder(embedder)
    return Router(config, embedder=embedder, history=history, profile_set=profile_set)


def _timed(call: Callable[[], Any]) -> tuple[Any, float, float]:
    """``call()``'s result, wall and CPU milliseconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def decide(router: Router, book: ReplayBook, row: DataRow, timings: Timings) -> None:
    """Route one query and record the replay upstream's usage for the chosen model, adding the times to ``timings``.

    The upstream's reply is looked up between the two calls, off the clock.
    """
    try:
        decision, wall, cpu = _timed(lambda: router.route(row.prompt))
    except BudgetExhaustedError:
        timings.refused += 1
        return
    reply = book.reply(router.config.deployment(decision.deployment).model, [{"role": "user", "content": row.prompt}])
    _, record_wall, record_cpu = _timed(lambda: router.record(decision.id, reply.prompt_tokens,
                                                              reply.completion_tokens))
    for samples, route_time, record_time in ((timings.wall, wall, record_wall), (timings.cpu, cpu, record_cpu)):
        samples["route"].append(route_time)
        samples["route_record"].append(route_time + record_time)


def measure_ledgers(data: DataFile, book: ReplayBook, routers: Mapping[str, Router], options: ScaleOptions
                    ) -> dict[str, Timings]:
    """Time ``options.decisions`` decisions on each router, in alternating blocks of ``options.block``.

    Args:
        data: the queries are drawn from its rows (the same queries, in the same order, on every ledger).
        book: the replay upstream's answers, whose usage is recorded.
        routers: ledger name → router.
        options: decisions, block size, seed.

    Returns:
        Ledger name → its timings.
    """
    queries = draw_queries(data.rows, options.decisions, options.seed)
    for router in routers.values():  # the first route loads the history's exact index: start-up, not a route
        decide(router, book, queries[0], Timings())
    timings = {ledger: Timings() for ledger in routers}
    blocks = -(-options.decisions // options.block)
    for turn, ledger in enumerate(block_order(blocks, list(routers))):
        start = turn // len(routers) * options.block
        for row in queries[start:start + options.block]:
            decide(routers[ledger], book, row, timings[ledger])
    return timings


def latency_report(timings: Mapping[str, Timings]) -> dict[str, Any]:
    """Every ledger's summaries (ms) and, with both ledgers, the Redis ÷ SQLite p50 ratios against the target."""
    report: dict[str, Any] = {
        ledger: {"refused": t.refused, **{step: {"wall_ms": summarize(t.wall[step]), "cpu_ms": summarize(t.cpu[step])}
                                         for step in STEPS}}
        for ledger, t in timings.items()
    }
    if all(ledger in timings for ledger in LEDGERS):
        report["redis_over_sqlite_p50"] = {
            step: report["redis"][step]["wall_ms"]["p50"] / report["sqlite"][step]["wall_ms"]["p50"] for step in STEPS
        }
        report["target"] = f"redis route+record p50 <= {TARGET_RATIO} x sqlite"
    return report


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU count and load averages."""
    return {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def run(options: ScaleOptions, workdir: Path) -> dict[str, Any]:
    """The whole benchmark: the latency run on the chosen ledgers, then the throughput run per worker count.

    A private ``redis-server`` (and for the proxies a Chroma server and the replay upstream) runs on 127.0.0.1 for
    the duration and is stopped by its PID.

    Args:
        options: what to measure.
        workdir: an empty folder for the routers' data, the servers' folders and logs.

    Returns:
        ``command`` (see :func:`command_line`), ``setup``, ``machine``, ``latency`` (see :func:`latency_report`),
        ``throughput`` (one entry per worker count) and ``seconds`` (the whole run's wall time).
    """
    started = time.perf_counter()
    data = read_data(bundled_path())
    hashing = HashingEmbedder(int(EMBEDDING_MODEL.removeprefix("hashing-")))
    prompts = [row.prompt for row in data.rows]
    embedder = CachedEmbedder(prompts, hashing.embed(prompts), hashing.name)  # off the clock: no embedding time
    with ExitStack() as servers:
        needs_redis = "redis" in options.ledgers or options.workers
        redis_url = servers.enter_context(RedisServer(workdir / "redis")).url if needs_redis else ""
        routers = {
            ledger: open_router(data, embedder, scale_config(
                workdir / ledger, redis_url if ledger == "redis" else "sqlite", options.decisions))
            for ledger in options.ledgers
        }
        latency = latency_report(measure_ledgers(data, ReplayBook.from_files(), routers, options))
        throughput = measure_throughput(workdir, data, redis_url, options) if options.workers else []
    some = next(iter(routers.values()))
    setup = {**asdict(options), "embedding": f"{EMBEDDING_MODEL} (precomputed, off the clock)",
             "history_records": len(data.rows), "deployments": len(some.config.deployments),
             "token_budget": TOKEN_BUDGET}
    return {"command": command_line(options), "setup": setup, "machine": machine(), "latency": latency,
            "throughput": throughput, "seconds": time.perf_counter() - started}


def command_line(options: ScaleOptions) -> str:
    """The ``llm-router bench-scale`` command that measures ``options`` (to rerun it)."""
    return (f"llm-router bench-scale --decisions {options.decisions} --block {options.block} --ledgers "
            f"{','.join(options.ledgers)} --workers '{','.join(map(str, options.workers))}' --requests "
            f"{options.requests} --concurrency {options.concurrency} --seed {options.seed}")


def measure_throughput(workdir: Path, data: DataFile, redis_url: str, options: ScaleOptions) -> list[dict[str, Any]]:
    """Per worker count, a proxy run with the router and one of LiteLLM alone (see
    :mod:`llm_router_plugin.bench.scale_proxy`), sharing one Chroma server and upstream."""
    from llm_router_plugin.bench.scale_proxy import measure_proxy  # LiteLLM is loaded only when proxies are measured

    with ReplayUpstream(log=workdir / "replay.log") as upstream, ChromaServer(workdir / "chroma") as chroma:
        return [measure_proxy(workdir / f"proxy-{workers}w{'' if routed else '-alone'}", data, upstream.url,
                              redis_url, chroma, workers, options, routed=routed)
                for workers in options.workers for routed in (True, False)]


def format_table(result: Mapping[str, Any]) -> str:
    """The latency table and, if measured, the throughput table of a :func:`run` result."""
    latency, setup = result["latency"], result["setup"]
    lines = [f"route + record latency, ms: {setup['decisions']} decisions per ledger in alternating blocks of "
             f"{setup['block']}, embeddings {setup['embedding']}, {setup['history_records']} history rows, "
             f"{setup['deployments']} deployments", "",
             f"{'ledger':<8} {'step':<13} {'wall p50':>9} {'p90':>8} {'p99':>8} {'cpu p50':>9} {'p90':>8} {'p99':>8}"]
    for ledger in LEDGERS:
        for step in STEPS if ledger in latency else ():
            wall, cpu = latency[ledger][step]["wall_ms"], latency[ledger][step]["cpu_ms"]
            lines.append(f"{ledger:<8} {step.replace('_', '+'):<13} {wall['p50']:>9.2f} {wall['p90']:>8.2f} "
                         f"{wall['p99']:>8.2f} {cpu['p50']:>9.2f} {cpu['p90']:>8.2f} {cpu['p99']:>8.2f}")
    if "redis_over_sqlite_p50" in latency:
        ratio = latency["redis_over_sqlite_p50"]
        lines.append(f"redis ÷ sqlite p50: route {ratio['route']:.2f}×, route+record {ratio['route_record']:.2f}× "
                     f"(target ≤ {TARGET_RATIO}×)")
    if result.get("throughput"):
        first = result["throughput"][0]
        lines += ["", f"LiteLLM proxy throughput: {first['requests']} requests, {first['concurrency']} in flight, "
                      f"Redis ledger, embedder {first['embedding']}, replay upstream; {result['machine']['cpus']} CPUs",
                  "", f"{'workers':>7} {'proxy':<14} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'errors':>7}"]
        for run in result["throughput"]:
            proxy = "with router" if run.get("routed", True) else "LiteLLM alone"
            lines.append(f"{run['workers']:>7} {proxy:<14} {run['requests_per_s']:>8.1f} "
                         f"{run['latency_ms']['p50']:>8.1f} {run['latency_ms']['p90']:>8.1f} {run['errors']:>7}")
    lines.append(f"\nwall time {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_json(result: Mapping[str, Any], path: Path) -> None:
    """Write a :func:`run` result as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
