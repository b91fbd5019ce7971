"""How fast the router is on this machine, by history size: import, route() per stage, start-up, concurrency, proxy.

History: synthetic records (seeded clusters of 384-dimensional unit vectors, as MiniLM makes, with outcomes of the
shipped default config's 11 deployments) written through :meth:`ChromaHistory.upsert` into one embedded store, grown
size by size (10k, then to 100k, then to 1M): the import rate excludes embedding, the vectors are given.

Per size, a router over that store (the shipped default config with token budgets, a SQLite ledger in a folder of
its own) first starts afresh (a new store object and router; Chroma's in-process cache is cleared, the model load
is not in it) and routes one query, then routes ``queries`` more, whose embeddings are drawn near the data and
precomputed. Each route's stages are timed (:mod:`llm_router_plugin.timing`): wall and the routing thread's CPU of
``lookup`` (history neighbours), ``estimation`` (the rest of the estimator), ``ledger`` (usages read and
reservation), ``log`` (decision log and learning state) and ``route`` (``route()`` without the embedding).

At one size, a router with a real embedder (the bundled MiniLM on one thread) routes shipped prompts: the
``embedding`` stage's cost, then decisions per second with 1, 8, 32 ``aroute()`` calls in flight. Its estimates are
meaningless (the history is synthetic), its costs are not.

Last, LiteLLM's added latency: two proxies with the same deployments on the replay upstream, one with the router
callback (the throughput run's setup of :mod:`llm_router_plugin.bench.scale_proxy`) and one with LiteLLM's own
``simple-shuffle``, take turns in blocks of requests at 1 and at 16 in flight.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_router_plugin.bench.replay import CachedEmbedder
from llm_router_plugin.bench.report import save_figure
from llm_router_plugin.bench.scale import draw_queries, machine, scale_config, summarize
from llm_router_plugin.config import DeploymentConfig, RouterConfig
from llm_router_plugin.dataset import bundled_path, read_data
from llm_router_plugin.embedding import Backend, make_embedder
from llm_router_plugin.errors import BudgetExhaustedError
from llm_router_plugin.history import ChromaHistory, HistoryRecord, ModelOutcome
from llm_router_plugin.profiles import ProfileSet, default_profile_set
from llm_router_plugin.router import Router
from llm_router_plugin.testing import ChromaServer, RedisServer, ReplayUpstream
from llm_router_plugin.timing import StageTimes, collect

#: The synthetic embeddings' dimension (MiniLM's).
DIMENSION = 384
#: The name the synthetic vectors' "embedder" goes by (profile set centres are given in its space).
SYNTHETIC_MODEL = f"synthetic-{DIMENSION}"
#: Records generated and written per :meth:`ChromaHistory.upsert` call.
IMPORT_CHUNK = 20_000
#: Spread of a record around its cluster centre: cosine ≈ 0.78 to the centre, ≈ 0.6 between two of one cluster.
NOISE = 0.8
#: Weight of a direction every vector shares: sentence embeddings are not spread over the whole sphere.
COMMON = 0.5
#: The stages reported per route (``estimation`` is ``estimate`` without its ``lookup``).
STAGES = ("lookup", "estimation", "ledger", "log", "route")
#: The packages whose versions the result names.
PACKAGES = ("llm-router-plugin", "chromadb", "numpy", "torch", "sentence-transformers", "litellm")


@dataclass(frozen=True)
class SpeedOptions:
    """What ``llm-router bench-speed`` measures.

    Attributes:
        sizes: history sizes, increasing (the store grows from one to the next).
        queries: routes timed per size (and per in-flight count of the concurrency run).
        clusters: centres the synthetic vectors are drawn around.
        concurrency_size: the size of the real-embedder and concurrency run (0: none).
        in_flight: ``aroute()`` calls in flight in the concurrency run.
        embedder: the embedding model of the concurrency and proxy runs (``None``: the bundled MiniLM;
            ``hashing-<dim>`` is cheap).
        backend: what runs the bundled MiniLM there (``None``: the router's default, ``embedding_backend``).
        proxy_requests: requests per proxy and in-flight count in the proxy run (0: none).
        proxy_in_flight: requests in flight in the proxy run.
        block: requests in a row on one proxy before the other takes its turn (at least the number in flight).
        seed: draws the data and the queries.
    """

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    queries: int = 300
    clusters: int = 300
    concurrency_size: int = 100_000
    in_flight: tuple[int, ...] = (1, 8, 32)
    embedder: str | None = None
    backend: Backend | None = None
    proxy_requests: int = 200
    proxy_in_flight: tuple[int, ...] = (1, 16)
    block: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes) or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"sizes: give increasing record counts of at least 1, got {list(self.sizes)}")
        for name in ("queries", "clusters", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.concurrency_size and self.concurrency_size not in self.sizes:
            raise ValueError(f"concurrency_size: must be one of the sizes {list(self.sizes)} or 0, got "
                             f"{self.concurrency_size}")
        if self.proxy_requests < 0:
            raise ValueError(f"proxy_requests: must be at least 0, got {self.proxy_requests}")
        for name in ("in_flight", "proxy_in_flight"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name}: give counts of at least 1, got {list(getattr(self, name))}")


#: ``--quick``: a smoke run of a minute or so (one small size, no proxies).
QUICK = SpeedOptions(sizes=(2000,), queries=20, clusters=20, concurrency_size=2000, in_flight=(1, 4),
                     proxy_requests=0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


class SyntheticHistory:
    """Seeded history records: clustered unit vectors, and per deployment a quality, tokens and cost.

    Each cluster has its own chance that a model answers well (a model strong on one topic, weak on another) and
    each model its own verbosity; cost follows from the deployments' list prices.

    Args:
        deployments: the deployments whose models get outcomes.
        clusters: the number of cluster centres.
        seed: draws everything (a record depends on the seed and its index only).
    """

    def __init__(self, deployments: Sequence[DeploymentConfig], clusters: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        common = _unit(rng.standard_normal(DIMENSION))
        self.centres = _unit(COMMON * common + _unit(rng.standard_normal((clusters, DIMENSION))))
        self._seed = seed
        self._models = [d.model for d in deployments]
        self._skill = rng.beta(2, 2, size=(clusters, len(deployments)))
        self._verbosity = rng.uniform(80, 600, size=len(deployments))
        self._prices = np.array([[d.input_usd_per_mtok or 0.0, d.output_usd_per_mtok or 0.0]
                                 for d in deployments]) / 1e6

    def vectors(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` unit vectors near random centres, as float32, and their clusters."""
        labels = rng.integers(len(self.centres), size=n)
        noise = rng.standard_normal((n, DIMENSION)) * (NOISE / np.sqrt(DIMENSION))
        return _unit(self.centres[labels] + noise).astype(np.float32), labels

    def records(self, start: int, stop: int) -> list[HistoryRecord]:
        """Records ``start`` … ``stop - 1`` (ids ``syn-<index>``; the same every run of a seed and chunking)."""
        rng = np.random.default_rng([self._seed, 1, start])
        n = stop - start
        vectors, labels = self.vectors(rng, n)
        quality = (rng.random((n, len(self._models))) < self._skill[labels]).astype(float)
        prompt = np.ceil(rng.lognormal(np.log(150), 0.8, size=n)).astype(int)
        completion = np.ceil(self._verbosity * rng.lognormal(0, 0.5, size=(n, len(self._models)))).astype(int)
        cost = prompt[:, None] * self._prices[:, 0] + completion * self._prices[:, 1]
        return [
            HistoryRecord(id=f"syn-{start + i}", embedding=vectors[i], outcomes={
                model: ModelOutcome.model_construct(quality=float(quality[i, m]), prompt_tokens=int(prompt[i]),
                                                    completion_tokens=int(completion[i, m]),
                                                    cost_usd=float(cost[i, m]))
                for m, model in enumerate(self._models)
            })
            for i in range(n)
        ]

    def queries(self, n: int) -> np.ndarray:
        """``n`` query vectors drawn like the records (near the data, none of them stored)."""
        return self.vectors(np.random.default_rng([self._seed, 2]), n)[0]


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("rss: /proc/self/status has no VmRSS line")


def grow(store: Path, synthetic: SyntheticHistory, start: int, stop: int) -> dict[str, Any]:
    """Add records ``start`` … ``stop - 1`` to the store, ``IMPORT_CHUNK`` per upsert.

    Returns:
        ``records`` (the store's size after), ``added``, ``upsert_s`` (time in ``upsert`` only: generating the
        records is not in it), ``records_per_s``, ``elapsed_s`` (with the generation), ``disk_bytes`` (the store
        folder), ``rss_bytes`` and ``peak_rss_bytes`` of this process.
    """
    started = time.perf_counter()
    history = ChromaHistory(store)
    # As `llm-router import` does: records are put in the profile set's clusters as they are written.
    history.label_clusters(synthetic_profile_set(synthetic).centres)
    upsert_s = 0.0
    for first in range(start, stop, IMPORT_CHUNK):
        records = synthetic.records(first, min(stop, first + IMPORT_CHUNK))
        clock = time.perf_counter()
        history.upsert(records)
        upsert_s += time.perf_counter() - clock
    added = stop - start
    return {"records": stop, "added": added, "upsert_s": upsert_s, "records_per_s": added / upsert_s,
            "elapsed_s": time.perf_counter() - started, "disk_bytes": folder_bytes(store), "rss_bytes": rss_bytes(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def synthetic_profile_set(synthetic: SyntheticHistory) -> ProfileSet:
    """The shipped profile set with its clusters in the synthetic space: some of the data's own centres."""
    shipped = default_profile_set()
    centres = synthetic.centres[np.arange(shipped.clusters) % len(synthetic.centres)]
    return ProfileSet(shipped.prompts, centres.astype(np.float32), SYNTHETIC_MODEL)


def forget_stores() -> None:
    """Drop Chroma's in-process clients, so that the next store object opens the folder as a new process would."""
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


def open_router(config: RouterConfig, store: Path, embedder: Any, profile_set: ProfileSet) -> Router:
    """A router on ``config`` whose history is a new store object on the folder ``store``."""
    history = ChromaHistory(store, collection=config.collection, exact_search_max=config.exact_search_max)
    return Router(config, embedder=embedder, history=history, profile_set=profile_set)


def route_samples(times: StageTimes) -> dict[str, tuple[float, float]]:
    """One route's reported stages (see :data:`STAGES`, plus ``embedding``): name → (wall ms, CPU ms)."""
    totals = times.totals()

    def ms(name: str) -> tuple[float, float]:
        t = totals.get(name)
        return (t.wall_s * 1e3, t.cpu_s * 1e3) if t is not None else (0.0, 0.0)

    lookup, estimate = ms("lookup"), ms("estimate")
    return {"embedding": ms("embedding"), "lookup": lookup,
            "estimation": (estimate[0] - lookup[0], estimate[1] - lookup[1]), "ledger": ms("ledger"),
            "log": ms("log"), "route": ms("decide")}


def time_routes(router: Router, texts: Sequence[str], stages: Sequence[str]) -> dict[str, Any]:
    """Route every text, timing its stages.

    Returns:
        Per stage ``{"wall_ms": summary, "cpu_ms": summary}`` (see :func:`summarize`; the routing thread's CPU),
        ``call``: the whole ``route()`` call's ``wall_ms`` and ``process_cpu_ms`` (every thread of this process:
        the stages' CPU leaves out work done in other threads, e.g. a multi-threaded BLAS's), and ``refused``
        (routes no deployment could afford; not in the samples).
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in (*stages, "call")}
    refused = 0
    for text in texts:
        with collect() as times:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                router.route(text)
            except BudgetExhaustedError:
                refused += 1
                continue
            call = ((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3)
        for name, value in {**route_samples(times), "call": call}.items():
            if name in samples:
                samples[name].append(value)
    report: dict[str, Any] = {name: {"wall_ms": summarize([w for w, _ in values]),
                                     "cpu_ms": summarize([c for _, c in values])}
                              for name, values in samples.items() if values}
    if "call" in report:
        report["call"]["process_cpu_ms"] = report["call"].pop("cpu_ms")
    return {**report, "refused": refused}


def measure_size(store: Path, workdir: Path, synthetic: SyntheticHistory, size: int, options: SpeedOptions
                 ) -> dict[str, Any]:
    """Start a router afresh on the store (``size`` records) and time its first route and ``options.queries`` more.

    Returns:
        ``records``, ``search`` (``exact`` in memory, or Chroma's ``hnsw``), ``fresh_start`` (``open_s``: new store
        object and router; ``first_route_s``) and ``routes`` (see :func:`time_routes`).
    """
    vectors = synthetic.queries(options.queries + 1)
    texts = [f"synthetic query {i}" for i in range(len(vectors))]
    embedder = CachedEmbedder(texts, vectors, SYNTHETIC_MODEL)
    profile_set = synthetic_profile_set(synthetic)
    config = scale_config(workdir / f"router-{size}", "sqlite", options.queries + 1)
    forget_stores()
    clock = time.perf_counter()
    router = open_router(config, store, embedder, profile_set)
    opened = time.perf_counter()
    router.route(texts[0])
    fresh = {"open_s": opened - clock, "first_route_s": time.perf_counter() - opened}
    return {"records": size, "search": "exact" if size <= config.exact_search_max else "hnsw", "fresh_start": fresh,
            "routes": time_routes(router, texts[1:], STAGES)}


async def _throughput(router: Router, prompts: Sequence[str], in_flight: int) -> tuple[list[float], float, int]:
    """Each answered ``aroute()``'s latency (ms), the batch's wall seconds and the refused routes."""
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    refused = 0

    async def one(prompt: str) -> None:
        nonlocal refused
        async with gate:
            clock = time.perf_counter()
            try:
                await router.aroute(prompt)
            except BudgetExhaustedError:
                refused += 1
                return
            latencies.append((time.perf_counter() - clock) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return latencies, time.perf_counter() - started, refused


def measure_concurrency(store: Path, workdir: Path, options: SpeedOptions) -> dict[str, Any]:
    """A router with the real embedder on shipped prompts: the embedding stage, then decisions/s per in-flight count.

    Returns:
        ``records``, ``embedder``, ``model_load_s`` (the first embedding, loading the model), ``routes`` (the
        ``embedding`` and ``route`` stages of ``options.queries`` sequential routes) and ``throughput`` (per
        in-flight count: ``decisions_per_s``, ``latency_ms`` summary, ``refused``).
    """
    embedder = make_embedder(options.embedder, threads=1, backend=_backend(options))
    rows = read_data(bundled_path()).rows
    prompts = [row.prompt for row in draw_queries(rows, options.queries * (1 + len(options.in_flight)) + 1,
                                                  options.seed)]
    config = scale_config(workdir / "router-concurrency", "sqlite", len(prompts))
    clock = time.perf_counter()
    embedder.embed([prompts[0]])
    load_s = time.perf_counter() - clock
    router = open_router(config, store, embedder, default_profile_set())
    router.route(prompts[0])  # start-up (indexes, statistics) is measured per size, not here
    n = options.queries
    batches = [prompts[1 + i * n:1 + (i + 1) * n] for i in range(1 + len(options.in_flight))]
    routes = time_routes(router, batches[0], ("embedding", "route"))
    throughput = []
    for in_flight, batch in zip(options.in_flight, batches[1:], strict=True):
        latencies, seconds, refused = asyncio.run(_throughput(router, batch, in_flight))
        throughput.append({"in_flight": in_flight, "decisions": len(latencies),
                           "decisions_per_s": len(latencies) / seconds,
                           "latency_ms": summarize(latencies) if latencies else None, "refused": refused})
    return {"records": options.concurrency_size, "embedder": embedder.name, "model_load_s": load_s,
            "routes": routes, "throughput": throughput}


def proxy_turns(blocks: int) -> Iterator[tuple[bool, bool]]:
    """Which proxy goes first in each block (``True``: the routed one), alternating: (routed, alone), (alone,
    routed) …"""
    for b in range(blocks):
        yield (True, False) if b % 2 == 0 else (False, True)


def proxy_level(urls: Mapping[bool, str], prompts: Sequence[str], in_flight: int, block: int) -> dict[str, Any]:
    """Send ``prompts`` to both proxies (``urls``: routed → URL), ``block`` at a time each, taking turns.

    Returns:
        ``in_flight``, ``block``, ``with_router`` and ``litellm_alone`` (``latency_ms`` summary, ``errors``) and
        ``added_ms`` (the p50 and p90 differences; ``None`` if a proxy answered nothing).
    """
    from llm_router_plugin.bench.scale_proxy import send

    latencies: dict[bool, list[float]] = {True: [], False: []}
    errors = {True: 0, False: 0}
    for routed in (True, False):  # the warm-up: the routed proxy builds its router, both open connections
        asyncio.run(send(urls[routed], prompts[:2 * in_flight], [], in_flight))
    for turn, order in enumerate(proxy_turns(-(-len(prompts) // block))):
        for routed in order:
            got, _, failed = asyncio.run(send(urls[routed], [], prompts[turn * block:(turn + 1) * block], in_flight))
            latencies[routed] += got
            errors[routed] += failed
    summary = {routed: summarize(latencies[routed]) if latencies[routed] else None for routed in (True, False)}
    routed_ms, alone_ms = summary[True], summary[False]
    return {"in_flight": in_flight, "block": block,
            "with_router": {"latency_ms": routed_ms, "errors": errors[True]},
            "litellm_alone": {"latency_ms": alone_ms, "errors": errors[False]},
            "added_ms": {p: routed_ms[p] - alone_ms[p] for p in ("p50", "p90")} if routed_ms and alone_ms else None}


def measure_proxies(workdir: Path, options: SpeedOptions) -> dict[str, Any]:
    """LiteLLM's latency with the router callback and without it, in alternating blocks, per in-flight count.

    A private ``redis-server``, Chroma server and replay upstream run on 127.0.0.1 for the duration, and both proxies
    (one worker each) too; all are stopped by their PIDs.

    Returns:
        ``requests`` (per proxy and in-flight count) and ``levels`` (per in-flight count, see :func:`proxy_level`).
    """
    from llm_router_litellm.testing import LiteLLMProxy

    from llm_router_plugin.bench.scale_proxy import write_proxy_config

    data = read_data(bundled_path())
    # The router embeds every request as it would in production: the real model, not the benchmark's hashing one.
    embedding = {"embedding_model": options.embedder, "embedding_backend": _backend(options), "embedding_threads": 1}
    levels = []
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(workdir / "redis"))
        upstream = stack.enter_context(ReplayUpstream(log=workdir / "replay.log"))
        chroma = stack.enter_context(ChromaServer(workdir / "chroma"))
        expected = options.proxy_requests * len(options.proxy_in_flight) * 2
        urls = {}
        for routed in (True, False):
            path = write_proxy_config(workdir / ("proxy" if routed else "proxy-alone"), data, upstream.url, redis.url,
                                      chroma, 1, expected, routed=routed, overrides=embedding)
            urls[routed] = stack.enter_context(LiteLLMProxy(path, startup_timeout=300)).url
        for in_flight in options.proxy_in_flight:
            prompts = [row.prompt for row in draw_queries(data.rows, options.proxy_requests, options.seed + in_flight)]
            levels.append(proxy_level(urls, prompts, in_flight, max(options.block, in_flight)))
    return {"requests": options.proxy_requests, "levels": levels}


def _backend(options: SpeedOptions) -> Backend:
    """The backend of the real-embedder runs: the option, else the router's default."""
    default: Backend = RouterConfig.model_fields["embedding_backend"].default
    return options.backend or default


def versions() -> dict[str, str | None]:
    """The versions of :data:`PACKAGES` (``None``: not installed)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def run(options: SpeedOptions, workdir: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole benchmark: per size, grow the store and time routes; the concurrency run; the proxy run.

    Args:
        options: what to measure.
        workdir: an empty folder for the store, the routers' data, the servers' folders and logs.
        progress: called with a line as each phase ends (a long run's progress).

    Returns:
        ``command``, ``setup``, ``machine`` (CPUs, load, Python, platform, package versions), ``sizes`` (per size:
        ``import`` (see :func:`grow`) and the rest of :func:`measure_size`), ``concurrency`` (see
        :func:`measure_concurrency`; ``None`` if not run), ``proxy`` (see :func:`measure_proxies`; ``None`` if not
        run), ``phase_seconds`` (the wall time of each phase) and ``seconds`` (the whole run's).
    """
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def done(phase: str, since: float) -> None:
        phases[phase] = time.perf_counter() - since
        if progress is not None:
            progress(f"{phase}: {phases[phase]:.0f} s")

    store = workdir / "history"
    base = scale_config(workdir, "sqlite", options.queries)
    synthetic = SyntheticHistory(base.deployments, options.clusters, options.seed)
    sizes = []
    concurrency = proxy = None
    previous = 0
    for size in options.sizes:
        clock = time.perf_counter()
        imported = grow(store, synthetic, previous, size)
        done(f"import_{size}", clock)
        clock = time.perf_counter()
        sizes.append({"import": imported, **measure_size(store, workdir, synthetic, size, options)})
        done(f"routes_{size}", clock)
        if size == options.concurrency_size:
            clock = time.perf_counter()
            concurrency = measure_concurrency(store, workdir, options)
            done("concurrency", clock)
        previous = size
    if options.proxy_requests:
        clock = time.perf_counter()
        proxy = measure_proxies(workdir / "proxies", options)
        done("proxy", clock)
    setup = {**asdict(options), "dimension": DIMENSION, "noise": NOISE, "import_chunk": IMPORT_CHUNK,
             "deployments": len(base.deployments), "exact_search_max": base.exact_search_max,
             "ledger": "sqlite", "query_embeddings": f"{SYNTHETIC_MODEL}, precomputed (not in the route times)"}
    return {"command": command_line(options), "setup": setup,
            "machine": {**machine(), "python": platform.python_version(), "platform": platform.platform(),
                        "versions": versions()},
            "sizes": sizes, "concurrency": concurrency, "proxy": proxy, "phase_seconds": phases,
            "seconds": time.perf_counter() - started}


def command_line(options: SpeedOptions) -> str:
    """The ``llm-router bench-speed`` command that measures ``options`` (to rerun it)."""
    def counts(values: Sequence[int]) -> str:
        return ",".join(map(str, values))

    embedder = f" --embedder {options.embedder}" if options.embedder else ""
    embedder += f" --backend {options.backend}" if options.backend else ""
    return (f"llm-router bench-speed --sizes {counts(options.sizes)} --queries {options.queries} --clusters "
            f"{options.clusters} --concurrency-size {options.concurrency_size} --in-flight "
            f"{counts(options.in_flight)}{embedder} --proxy-requests {options.proxy_requests} --proxy-in-flight "
            f"{counts(options.proxy_in_flight)} --block {options.block} --seed {options.seed}")


def format_table(result: Mapping[str, Any]) -> str:
    """The summary tables of a :func:`run` result."""
    machine_ = result["machine"]
    lines = [f"route() per stage, ms, {result['setup']['queries']} queries per size, embeddings precomputed; "
             f"CPU of the routing thread ((process): every thread, the whole call); {machine_['cpus']} CPUs, load "
             f"{machine_['load_average'][0]:.1f}", "",
             f"{'records':>9} {'search':<6} {'stage':<11} {'cpu p50':>8} {'p90':>7} {'p99':>7} {'wall p50':>9} "
             f"{'p90':>7} {'p99':>7}"]
    for size in result["sizes"]:
        for name in STAGES:
            if name not in size["routes"]:
                continue
            cpu, wall = size["routes"][name]["cpu_ms"], size["routes"][name]["wall_ms"]
            lines.append(f"{size['records']:>9} {size['search']:<6} {name:<11} {cpu['p50']:>8.2f} {cpu['p90']:>7.2f} "
                         f"{cpu['p99']:>7.2f} {wall['p50']:>9.2f} {wall['p90']:>7.2f} {wall['p99']:>7.2f}")
        cpu = size["routes"]["call"]["process_cpu_ms"]
        lines.append(f"{size['records']:>9} {size['search']:<6} {'(process)':<11} {cpu['p50']:>8.2f} "
                     f"{cpu['p90']:>7.2f} {cpu['p99']:>7.2f}")
    lines += ["", f"{'records':>9} {'import rec/s':>12} {'disk MB':>8} {'RSS MB':>7} {'open s':>7} {'1st route s':>11}"]
    for size in result["sizes"]:
        imported, fresh = size["import"], size["fresh_start"]
        lines.append(f"{size['records']:>9} {imported['records_per_s']:>12.0f} {imported['disk_bytes'] / 1e6:>8.0f} "
                     f"{imported['rss_bytes'] / 1e6:>7.0f} {fresh['open_s']:>7.2f} {fresh['first_route_s']:>11.2f}")
    if result["concurrency"]:
        run_ = result["concurrency"]
        embedding = run_["routes"]["embedding"]
        lines += ["", f"{run_['embedder']} at {run_['records']} records: embedding cpu p50 "
                      f"{embedding['cpu_ms']['p50']:.1f} ms, wall p50 {embedding['wall_ms']['p50']:.1f} ms / p99 "
                      f"{embedding['wall_ms']['p99']:.1f} ms (model load {run_['model_load_s']:.1f} s)",
                  f"{'in flight':>9} {'decisions/s':>11} {'p50 ms':>8} {'p90 ms':>8}"]
        for level in run_["throughput"]:
            latency = level["latency_ms"] or {"p50": float("nan"), "p90": float("nan")}
            lines.append(f"{level['in_flight']:>9} {level['decisions_per_s']:>11.1f} {latency['p50']:>8.1f} "
                         f"{latency['p90']:>8.1f}")
    if result["proxy"]:
        lines += ["", "LiteLLM proxy latency, ms, replay upstream, alternating blocks",
                  f"{'in flight':>9} {'proxy':<14} {'p50':>7} {'p90':>7} {'errors':>6}"]
        for level in result["proxy"]["levels"]:
            for key, label in (("with_router", "with router"), ("litellm_alone", "LiteLLM alone")):
                run_ = level[key]
                latency = run_["latency_ms"] or {"p50": float("nan"), "p90": float("nan")}
                lines.append(f"{level['in_flight']:>9} {label:<14} {latency['p50']:>7.1f} {latency['p90']:>7.1f} "
                             f"{run_['errors']:>6}")
    lines.append(f"\nwall time {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_plot(result: Mapping[str, Any], path: Path) -> None:
    """Plot route() latency without the embedding (CPU p50 and p99, wall p50) against the history size, log x.

    The CPU of every thread is the whole call's (its embedding is a cached lookup).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    sizes = [s["records"] for s in result["sizes"]]
    routes = [s["routes"]["route"] for s in result["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    calls = [s["routes"]["call"]["process_cpu_ms"] for s in result["sizes"]]
    ax.plot(sizes, [r["cpu_ms"]["p50"] for r in routes], "o-", label="CPU p50 (routing thread)")
    ax.plot(sizes, [r["cpu_ms"]["p99"] for r in routes], "s-", label="CPU p99 (routing thread)")
    ax.plot(sizes, [c["p50"] for c in calls], "^:", label="CPU p50 (every thread)")
    ax.plot(sizes, [r["wall_ms"]["p50"] for r in routes], "o--", label="wall p50")
    ax.set_xscale("log")
    ax.set_xlabel("history records")
    ax.set_ylabel("route() without embedding, ms")
    ax.set_title(f"route() latency vs history size ({result['machine']['cpus']} CPUs)")
    save_figure(fig, ax, path)

