"""The ``llm-router`` command line: import history, inspect the router, route a query, run the benchmark, profile a
model.

The config comes from ``--config``, else ``$LLM_ROUTER_CONFIG``, else ``./router.yaml``, else the shipped default
(the 11 models of the RouterBench sample).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer

from llm_router_plugin._files import read_yaml
from llm_router_plugin.config import RouterConfig
from llm_router_plugin.dataset import bundled_path, import_history, read_data
from llm_router_plugin.embedding import Backend, Keep, make_embedder
from llm_router_plugin.embedding_batch import unbatched_embedder
from llm_router_plugin.embedding_cache import CachingEmbedder, cache_path
from llm_router_plugin.errors import LedgerUnavailableError, RouterError
from llm_router_plugin.history import ChromaHistory, StoreNotConnectedError
from llm_router_plugin.onboarding import onboard as onboard_model
from llm_router_plugin.onboarding import read_results
from llm_router_plugin.pricing import Price, read_prices
from llm_router_plugin.profiles import build_profile_set, load_profile_set
from llm_router_plugin.router import Decision, Router, RouterStatus
from llm_router_plugin.validation import amount
from llm_router_plugin.vector_pack import PackedEmbedder, VectorPack, shipped_packs

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Budget-aware per-query LLM routing.")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Router config YAML (default: $LLM_ROUTER_CONFIG, ./router.yaml)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ProxyConfigOption = Annotated[
    Path | None, typer.Option("--proxy-config", help="A LiteLLM proxy's config.yaml: every routed model group's "
                                                    "router (instead of --config).")
]


def show_version(asked: bool) -> None:
    """Print the installed package's version and stop (the ``--version`` option)."""
    if asked:
        typer.echo(f"llm-router {package_version('llm-router-plugin')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Budget-aware per-query LLM routing."""


def load_config(path: Path | None) -> RouterConfig:
    """Resolve and load the router config (see the module docstring for the lookup order).

    Args:
        path: the ``--config`` option.

    Returns:
        The config.

    Raises:
        FileNotFoundError: ``--config`` or ``$LLM_ROUTER_CONFIG`` names no file (a typo must not silently route with
            the shipped default config).
        ValueError: the file is not a valid config (the message names the file and the line or field), or is a
            LiteLLM proxy config (the message points to ``--proxy-config``).
    """
    if path is None and os.environ.get("LLM_ROUTER_CONFIG"):
        path = Path(os.environ["LLM_ROUTER_CONFIG"])
    if path is None:
        path = Path("router.yaml") if Path("router.yaml").exists() else bundled_path("default_router.yaml")
    content = read_yaml(path, "config")
    # A proxy config fails validation on every key it has: one pointer to the right option says more.
    if isinstance(content, dict) and "model_list" in content:
        raise ValueError(f"{path}: not a router config (it has a model_list); this looks like a LiteLLM proxy "
                         "config: use --proxy-config")
    return RouterConfig.from_yaml(path)


@app.command("import")
def import_command(
    file: Annotated[Path | None, typer.Argument(help="CSV/JSONL, unified schema (default: shipped sample)")] = None,
    config: ConfigOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows embedded per forward pass.")] = 256,
    strict: Annotated[bool, typer.Option(help="Refuse the whole file if any row is invalid.")] = False,
    vectors: Annotated[
        list[Path] | None, typer.Option(help="Vector pack(s) of the file's prompts (`llm-router vectors`); the "
                                             "shipped sample's pack is always read.")
    ] = None,
    prices: Annotated[
        Path | None, typer.Option(help="USD per million tokens per model (JSON): the completion tokens a row's cost "
                                       "implies, for a file with costs and no token counts (default for the shipped "
                                       "sample: its list prices).")
    ] = None,
) -> None:
    """Embed a history file's rows and add them to the router's Chroma history (idempotent)."""
    cfg = load_config(config)
    data = read_data(file or bundled_path())
    if data.rejected:
        typer.echo(f"warning: {data.rejection_summary()}", err=True)
        if strict:
            typer.echo("nothing imported (--strict)", err=True)
            raise typer.Exit(1)
    # No Router here: its start-up checks (a price for every USD budget) may need the very history being imported.
    history = ChromaHistory.from_config(cfg)
    embedder = PackedEmbedder(
        CachingEmbedder(unbatched_embedder(cfg), cache_path(cfg)),
        [*shipped_packs(), *(VectorPack.load(path) for path in vectors or ())],
    )
    # Records go into the profile set's clusters as they are written: no pass over the history at the first route.
    history.label_clusters(load_profile_set(cfg.profile_set).for_embedder(embedder).centres)
    report = import_history(data, history, embedder, batch_size=batch_size, store_prompts=cfg.store_prompts,
                            progress=True, prices=read_prices(prices) if prices else None)
    typer.echo(f"imported {report.added} new record(s), {report.existing} already present, {report.rejected} "
               f"rejected; models: {', '.join(report.models)}; history now {history.count()} records")
    typer.echo(f"{report.seconds:.1f} s: {report.rate:.0f} records/s, {report.write_rate:.0f} records/s excluding "
               f"embedding ({report.embedding_seconds:.1f} s)")
    missing = [d.model for d in cfg.deployments if d.model not in report.models]
    if missing:
        typer.echo(f"note: this file has no outcomes for profiles {missing}", err=True)


@app.command("vectors")
def vectors_command(
    out: Annotated[Path, typer.Option(help="The pack to write (.npz).")],
    file: Annotated[Path | None, typer.Argument(help="CSV/JSONL, unified schema (default: shipped sample)")] = None,
    config: ConfigOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts embedded per forward pass.")] = 256,
) -> None:
    """Embed a history file's prompts once into a vector pack, which `llm-router import --vectors` reads."""
    cfg = load_config(config)
    data = read_data(file or bundled_path())
    embedder = CachingEmbedder(unbatched_embedder(cfg), cache_path(cfg))
    pack = VectorPack.build((row.prompt for row in data.rows), embedder, batch_size=batch_size)
    pack.save(out)
    typer.echo(f"wrote {len(pack.keys)} vectors of {pack.model} ({len(data.rows)} rows) to {out}")


@app.command()
def status(config: ConfigOption = None, proxy_config: ProxyConfigOption = None, as_json: JsonOption = False) -> None:
    """Show budgets, spend, reservations, dual weights, phase and history size (per model group with
    --proxy-config)."""
    if proxy_config is None:
        snapshot = Router(load_config(config)).status()
        typer.echo(snapshot.model_dump_json(indent=2) if as_json else format_status(snapshot))
        return
    snapshots = {group: router.status() for group, router in proxy_routers(config, proxy_config).items()}
    if as_json:
        typer.echo(json.dumps({group: s.model_dump(mode="json") for group, s in snapshots.items()}, indent=2))
    else:
        typer.echo(by_group({group: format_status(s) for group, s in snapshots.items()}))


@app.command()
def report(
    config: ConfigOption = None,
    proxy_config: ProxyConfigOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the panels (PNG): spend vs budget over time, decisions by phase, "
                                       "estimated vs actual cost, feedback.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only decisions since then: a duration back from now (24h, 7d) or an ISO date.")
    ] = None,
) -> None:
    """Report spend per budget window, decisions per deployment and phase, cost estimate error and feedback."""
    from llm_router_plugin.report import build_report, format_report, parse_since, write_json, write_plot

    start = None if since is None else parse_since(since, time.time())
    if proxy_config is None:
        single = build_report(Router(load_config(config)), start)
        typer.echo(format_report(single))
        _write(single, json_out, write_json, plot, write_plot)
        return
    reports = {group: build_report(router, start) for group, router in proxy_routers(config, proxy_config).items()}
    typer.echo(by_group({group: format_report(r) for group, r in reports.items()}))
    _write(reports, json_out, write_json, plot, write_plot)


def proxy_routers(config: Path | None, proxy_config: Path) -> dict[str, Router]:
    """The router of every routed model group of a LiteLLM proxy's config.yaml (as the proxy builds them).

    Args:
        config: the ``--config`` option, which must not be given too.
        proxy_config: the proxy's config.yaml.

    Returns:
        Model group → its router, in ``model_list`` order.

    Raises:
        typer.Exit: both options given, the LiteLLM integration is not installed, or no group is routed (the message
            says which).
    """
    if config is not None:
        _fail("give --config or --proxy-config, not both")
    try:  # here, not at the top: the core command line must work without LiteLLM
        from llm_router_litellm import LiteLLMAdapter
    except ImportError:
        _fail("--proxy-config needs the LiteLLM integration: pip install llm-router-plugin-litellm")
    adapter = LiteLLMAdapter.from_proxy_config(proxy_config)
    routers = {group: router for group in adapter.validate() if (router := adapter.router(group)) is not None}
    if not routers:
        _fail(f"{proxy_config}: no routed model group (no deployment has a model_info.llm_router block)")
    return routers


def by_group(texts: dict[str, str]) -> str:
    """Texts under a ``model group NAME`` header each."""
    return "\n\n".join(f"== model group {group} ==\n{text}" for group, text in texts.items())


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def route(
    text: Annotated[str, typer.Argument(help="The query to route; - reads it from standard input.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
    prompt_tokens: Annotated[int | None, typer.Option(help="Exact prompt tokens, if known.")] = None,
) -> None:
    """Route one query and explain the decision: a dry run, so nothing is reserved, spent, logged or counted."""
    if text == "-":
        text = read_stdin_query()
    router = Router(load_config(config))
    try:
        decision = router.route(text, prompt_tokens=prompt_tokens, dry_run=True)
    except (RouterError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(decision.model_dump_json(indent=2) if as_json else format_decision(decision))


def read_stdin_query() -> str:
    """The query text piped to ``llm-router route -`` (long prompts do not fit an argument).

    Raises:
        typer.Exit: code 2, after saying so, when standard input holds nothing but whitespace.
    """
    text = sys.stdin.read()
    if not text.strip():
        typer.echo("error: standard input holds no query text (route - reads the query from it)", err=True)
        raise typer.Exit(2)
    return text


@app.command()
def bench(
    data: Annotated[
        Path | None, typer.Argument(help="Data file, unified schema (default: shipped RouterBench sample)")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated split seeds (default 42,1,2; with --unseen 42,1,2,3,4).")
    ] = None,
    splits: Annotated[str, typer.Option(help="Comma-separated budget splits.")] = "weighted,uniform,cost,perf",
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours of the k-NN estimates.")] = 5,
    budget: Annotated[
        float, typer.Option(help="Total budget ÷ cost of all test queries on the cheapest model.")
    ] = 1.0,
    policies: Annotated[
        str | None, typer.Option(help="Comma-separated policies (default: all but ours-feedback; with --unseen: "
                                       "ours-full, ours-onboarded, zero-router, knn-profile).")
    ] = None,
    prices: Annotated[
        Path | None, typer.Option(help="USD per million tokens per model: costs for data without them, and the "
                                       "prices our router's deployments are configured with (default for the "
                                       "shipped sample: its models' list prices).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the quality-vs-budget plot (PNG); adds a budget sweep.")
    ] = None,
    per_run: Annotated[bool, typer.Option(help="Print the table of every (seed, split), not only the mean.")] = True,
    embedder: Annotated[str | None, typer.Option(help="Embedding model (default: bundled all-MiniLM-L6-v2).")] = None,
    backend: Annotated[
        Backend, typer.Option(help="What runs the bundled MiniLM: torch (fp32) or onnx-int8 (int8 arithmetic).")
    ] = "torch",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for embedding.")] = 1,
    keep: Annotated[
        Keep,
        typer.Option(help="Which end of a long prompt every policy's embeddings see: head (what sentence-transformers "
                          "does, as the protocol's reference numbers) or tail (the router's default)."),
    ] = "head",
    cache_dir: Annotated[Path, typer.Option(help="Embedding cache folder.")] = Path(".llm-router/cache"),
    unseen: Annotated[
        float | None, typer.Option(help="Run the unseen-model protocol instead: this share of the models is known "
                                        "only by its profile answers (e.g. 0.33).")
    ] = None,
    profile_size: Annotated[int, typer.Option(min=1, help="Prompts in each trial's profile set.")] = 200,
    clusters: Annotated[int, typer.Option(min=1, help="K-means clusters of the profile set.")] = 16,
) -> None:
    """Benchmark the router against the protocol's baselines, PORT and the offline optima (see the README)."""
    from llm_router_plugin.bench import protocol, report, runner
    from llm_router_plugin.bench.cache import EmbeddingCache

    source = read_data(data or bundled_path())
    if prices is None and data is None:
        prices = bundled_path("routerbench_prices.json")  # the list prices the shipped sample's costs came from
    problem = protocol.build_problem(source, read_prices(prices) if prices else None)
    typer.echo(problem.cost_note)
    if unseen is not None:
        from llm_router_plugin.bench.unseen import UNSEEN_POLICIES, UnseenOptions, run_unseen

        unseen_options = UnseenOptions(
            seeds=protocol.parse_seeds(seeds or "42,1,2,3,4"),
            splits=tuple(protocol.parse_list(splits, protocol.SPLITS, "--splits")), fraction=unseen,
            profile_size=profile_size, clusters=clusters, k=k, multiplier=budget,
            policies=tuple(protocol.parse_list(policies, tuple(UNSEEN_POLICIES), "--policies")) if policies
            else tuple(UNSEEN_POLICIES),
        )
        unseen_result = run_unseen(problem, make_embedder(embedder, threads, keep, backend), unseen_options,
                                   EmbeddingCache(cache_dir))
        typer.echo(report.unseen_table(unseen_result))
        typer.echo(f"wall time {unseen_result.seconds:.0f} s")
        if json_out:
            report.write_unseen_json(unseen_result, json_out)
            typer.echo(f"wrote {json_out}")
        return
    options = runner.BenchOptions(
        seeds=protocol.parse_seeds(seeds or "42,1,2"),
        splits=tuple(protocol.parse_list(splits, protocol.SPLITS, "--splits")),
        k=k, multiplier=budget,
        policies=tuple(protocol.parse_list(policies, tuple(runner.POLICIES), "--policies")) if policies
        else runner.DEFAULT_POLICIES,
        plot_multipliers=runner.PLOT_MULTIPLIERS if plot else (), profile_size=profile_size, clusters=clusters,
    )
    result = runner.run_benchmark(problem, make_embedder(embedder, threads, keep, backend), options,
                                  EmbeddingCache(cache_dir))
    if per_run:
        for run in result.runs:
            typer.echo(report.run_table(run) + "\n")
    typer.echo(report.mean_table(result))
    typer.echo(f"wall time {result.seconds:.0f} s")
    _write(result, json_out, report.write_json, plot, report.write_plot)


@app.command("bench-scale")
def bench_scale(
    decisions: Annotated[int, typer.Option(min=1, help="Decisions (route + record) per ledger.")] = 2000,
    block: Annotated[int, typer.Option(min=1, help="Decisions in a row on one ledger before the other's turn.")] = 50,
    ledgers: Annotated[str, typer.Option(help="Comma-separated ledgers of the latency run: sqlite, redis.")] = (
        "sqlite,redis"),
    workers: Annotated[
        str, typer.Option(help="Comma-separated LiteLLM proxy worker counts of the throughput run ('' skips it).")
    ] = "1,2,4",
    requests: Annotated[int, typer.Option(min=1, help="Requests per worker count.")] = 400,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 32,
    seed: Annotated[int, typer.Option(help="Draws the queries.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the routers' data and the servers' logs here (default: a temporary "
                                       "folder, removed).")
    ] = None,
) -> None:
    """Measure the scale-out cost: route + record latency on SQLite vs Redis, proxy throughput per worker count."""
    import tempfile

    from llm_router_plugin.bench import protocol, scale

    options = scale.ScaleOptions(
        decisions=decisions, block=block, ledgers=tuple(protocol.parse_list(ledgers, scale.LEDGERS, "--ledgers")),
        workers=parse_counts(workers, "--workers"), requests=requests, concurrency=concurrency, seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="llm-router-bench-scale-") as scratch:
        result = scale.run(options, work_dir or Path(scratch))
    typer.echo(scale.format_table(result))
    if json_out:
        scale.write_json(result, json_out)
        typer.echo(f"wrote {json_out}")


@app.command("bench-speed")
def bench_speed(
    sizes: Annotated[str, typer.Option(help="Comma-separated history sizes, increasing (the store grows).")] = (
        "10000,100000,1000000"),
    queries: Annotated[int, typer.Option(min=1, help="Routes timed per size.")] = 300,
    clusters: Annotated[int, typer.Option(min=1, help="Centres the synthetic history is drawn around.")] = 300,
    concurrency_size: Annotated[
        int, typer.Option(min=0, help="The size of the real-embedder and concurrency run (0 skips it).")
    ] = 100_000,
    in_flight: Annotated[str, typer.Option(help="Comma-separated aroute() calls in flight.")] = "1,8,32",
    embedder: Annotated[
        str | None, typer.Option(help="Embedding model of the concurrency and proxy runs (default: the bundled "
                                      "MiniLM).")
    ] = None,
    backend: Annotated[
        Backend | None, typer.Option(help="What runs the bundled MiniLM there (default: the router's default).")
    ] = None,
    proxy_requests: Annotated[
        int, typer.Option(min=0, help="Requests per proxy and in-flight count of the proxy run (0 skips it).")
    ] = 200,
    proxy_in_flight: Annotated[str, typer.Option(help="Comma-separated requests in flight at the proxies.")] = "1,16",
    block: Annotated[int, typer.Option(min=1, help="Requests in a row on one proxy before the other's turn.")] = 20,
    quick: Annotated[
        bool, typer.Option(help="A short smoke run: 2,000 records, 20 queries, no proxies (size options ignored).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Draws the history and the queries.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write route() latency vs history size (PNG).")] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the history store, the routers' data and the servers' logs here "
                                       "(default: a temporary folder, removed).")
    ] = None,
) -> None:
    """Measure speed by history size: import, route() per stage, first route, concurrency, LiteLLM's added latency."""
    import tempfile
    from dataclasses import replace

    from llm_router_plugin.bench import scale, speed

    options = speed.QUICK if quick else speed.SpeedOptions(
        sizes=parse_counts(sizes, "--sizes"), queries=queries, clusters=clusters, concurrency_size=concurrency_size,
        in_flight=parse_counts(in_flight, "--in-flight"), proxy_requests=proxy_requests,
        proxy_in_flight=parse_counts(proxy_in_flight, "--proxy-in-flight"), block=block,
    )
    options = replace(options, embedder=embedder, backend=backend, seed=seed)
    with tempfile.TemporaryDirectory(prefix="llm-router-bench-speed-") as scratch:
        result = speed.run(options, work_dir or Path(scratch), progress=lambda line: typer.echo(line, err=True))
    typer.echo(speed.format_table(result))
    _write(result, json_out, scale.write_json, plot, speed.write_plot)


def _write(result: Any, json_out: Path | None, write_json: Callable[[Any, Path], None], plot: Path | None,
           write_plot: Callable[[Any, Path], None]) -> None:
    """Write a benchmark's JSON and plot where asked, saying so."""
    for path, write in ((json_out, write_json), (plot, write_plot)):
        if path:
            write(result, path)
            typer.echo(f"wrote {path}")


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated whole numbers; an empty text is none.

    Raises:
        ValueError: an item that is not a whole number (the message names ``option``).
    """
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated whole numbers, got {text!r}") from None


@app.command("replay-server")
def replay_server(
    data: Annotated[
        Path | None, typer.Argument(help="Data file, unified schema (default: shipped RouterBench sample)")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 = any free port).")] = 8001,
    prices: Annotated[
        Path | None, typer.Option(help="USD per million tokens per model (default: shipped RouterBench prices).")
    ] = None,
) -> None:
    """Serve an OpenAI-compatible upstream that answers as the data file's models did, for offline end-to-end runs."""
    from llm_router_plugin.replay import ReplayBook, ReplayServer

    book = ReplayBook.from_files(data, prices)
    server = ReplayServer(book, host=host, port=port)
    typer.echo(f"replaying {len(book.models)} models on {len(book)} prompts at {server.url} (Ctrl-C stops)")
    server.run()


def format_decision(decision: Decision) -> str:
    """A decision as a small table, and what its scores are."""
    lines = [f"→ {decision.deployment}  [{decision.phase}]  {decision.reason}", "",
             f"{'deployment':<36} {'quality':>8} {'tokens':>8} {'usd':>10} {'score':>10}  affordable"]
    for c in decision.candidates:
        lines.append(f"{c.deployment:<36} {c.quality:>8.3f} {c.tokens:>8.0f} {c.usd:>10.6f} {c.score:>10.4g}  "
                     f"{'yes' if c.affordable else 'no'}")
    return "\n".join([*lines, "", f"score: {decision.score_formula}"])


def format_status(snapshot: RouterStatus) -> str:
    """A status snapshot as a small table."""
    history = "history unreachable" if snapshot.history_size is None else f"history {snapshot.history_size} records"
    if snapshot.history_pending:
        history += f", {snapshot.history_pending} outcome(s) queued for it"
    if snapshot.unsettled:
        history += f", {snapshot.unsettled} outcome(s) queued for the ledger"
    lines = [f"phase {snapshot.phase} ({snapshot.mode}), {snapshot.decisions} decisions, next re-solve at "
             f"{snapshot.next_solve_at}, {history}", "",
             f"{'deployment':<36} {'window':>7} {'limit':>14} {'spent':>12} {'reserved':>10} {'remaining':>12} "
             f"{'λ':>10}"]
    for d in snapshot.deployments:
        for unit in d.limits or {"tokens": float("inf")}:
            lines.append(
                f"{d.name:<36} {d.window:>7} {d.limits.get(unit, float('inf')):>10.6g} {unit:<3} "
                f"{d.spent.get(unit, 0.0):>12.6g} {d.reserved.get(unit, 0.0):>10.6g} "
                f"{d.remaining.get(unit, float('inf')):>12.6g} {d.weights.get(unit, 0.0):>10.4g}"
            )
    if snapshot.solve_notes:
        lines += ["", *snapshot.solve_notes]
    if snapshot.unknown_models:
        lines.append("")
        lines += [f"no history for model {model}: it is routed on the prior quality until onboarded — run "
                  f"llm-router profile run --model {model} …, then llm-router onboard {model} RESULTS"
                  for model in snapshot.unknown_models]
    return "\n".join(lines)


# ---- profile: onboarding a model the history does not know --------------------------------------------------------
# `profile run` collects a model's answers on a profile set; `profile build` (making a profile set) joins this sub-app.

profile_app = typer.Typer(no_args_is_help=True, help="Profile sets: describe a new model by its answers on them.")
app.add_typer(profile_app, name="profile")


@profile_app.command("run")
def profile_run_command(
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible API root, e.g. http://127.0.0.1:4000/v1.")],
    model: Annotated[str, typer.Option(help="The model (deployment) name to ask.")],
    out: Annotated[Path, typer.Option(help="Results file (JSONL); rerunning with it resumes.")],
    profile: Annotated[
        Path | None, typer.Option(help="Profile set file (default: the config's, else the shipped one).")
    ] = None,
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Calls in flight at once.")] = 4,
    api_key_env: Annotated[
        str | None, typer.Option(help="Name of the environment variable holding the API key (never the key).")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Completion limit per call.")] = None,
    scorer: Annotated[
        str, typer.Option(help="reference (match the prompt's reference answer), judge (an LLM grades 0-10), "
                               "none, or module:function returning a score in [0, 1] or None.")
    ] = "reference",
    judge_model: Annotated[str | None, typer.Option(help="The judge's model name (--scorer judge).")] = None,
    prices: Annotated[
        Path | None, typer.Option(help="USD per million tokens per model (JSON); the --model entry prices calls "
                                       "whose endpoint reports no cost.")
    ] = None,
    input_usd_per_mtok: Annotated[float | None, typer.Option(min=0, help="USD per million prompt tokens.")] = None,
    output_usd_per_mtok: Annotated[
        float | None, typer.Option(min=0, help="USD per million completion tokens.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts (a trial run).")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds one call may take.")] = 120.0,
    retries: Annotated[
        int, typer.Option(min=0, max=10, help="Further attempts after a 429, 5xx or connection error.")
    ] = 3,
) -> None:
    """Ask a model every profile prompt, score its answers and write one JSON line each (for `llm-router onboard`)."""
    from llm_router_plugin import profile_run

    try:
        prompts = load_profile_set(profile or load_config(config).profile_set)
        if profile is not None and out.resolve() == profile.resolve():
            raise ValueError("out: must not be the profile set file")
        price = cli_price(model, prices, input_usd_per_mtok, output_usd_per_mtok)
        api_key = api_key_from_env(api_key_env)
        endpoint = profile_run.ChatEndpoint(base_url, api_key=api_key, timeout_s=timeout, retries=retries)
        if os.getcwd() not in sys.path:  # module:function scorers next to the user's files, as `python -m` finds them
            sys.path.insert(0, os.getcwd())
        with endpoint:
            chosen = profile_run.make_scorer(scorer, endpoint, judge_model)
            summary = profile_run.run_profile(prompts, out, endpoint, model, scorer=chosen, price=price,
                                              max_tokens=max_tokens, concurrency=concurrency, limit=limit,
                                              progress=True)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"answered {summary.answered}, failed {summary.failed}, scored {summary.scored}, skipped "
               f"{summary.skipped} already answered; cost ${summary.cost_usd:.6f} (known costs); wall time "
               f"{summary.seconds:.1f} s; results in {summary.out}")
    if summary.failed:
        typer.echo(f"error: {summary.failed} call(s) failed, first: {summary.first_error}; rerun the same command "
                   "to retry them", err=True)
        raise typer.Exit(1)


def cli_price(model: str, prices: Path | None, input_usd: float | None, output_usd: float | None) -> Price | None:
    """The price of ``model`` from ``--prices`` or from both per-token options; ``None`` if neither is given.

    Raises:
        ValueError: both ways given, only one side of the price, or the price file has no entry for the model.
    """
    sides = (input_usd, output_usd)
    if prices is not None and sides != (None, None):
        raise ValueError("prices: give --prices or --input-usd-per-mtok/--output-usd-per-mtok, not both")
    if prices is not None:
        table = read_prices(prices)
        if model not in table:
            raise ValueError(f"prices: {prices} has no price for model {model!r}")
        return table[model]
    if None in sides and sides != (None, None):
        raise ValueError("input_usd_per_mtok/output_usd_per_mtok: give both (0 for a side that is free)")
    if input_usd is None or output_usd is None:
        return None
    return Price(amount("input_usd_per_mtok", input_usd), amount("output_usd_per_mtok", output_usd))


def api_key_from_env(variable: str | None) -> str | None:
    """The API key held by environment variable ``variable`` (``None`` if no variable is named).

    Raises:
        ValueError: the variable is not set or empty.
    """
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise ValueError(f"api_key_env: environment variable {variable!r} is not set")
    return key

@app.command()
def onboard(
    model: Annotated[str, typer.Argument(help="The model name the deployments use (their `model`).")],
    results: Annotated[Path, typer.Argument(help="Its answers on the profile set (what `profile run` writes).")],
    config: ConfigOption = None,
    profile: Annotated[
        Path | None, typer.Option(help="The profile set the answers are on (default: the config's).")
    ] = None,
) -> None:
    """Import a model's outcomes on the profile set into history, so the router can estimate it (idempotent)."""
    cfg = load_config(config)
    profile_set = load_profile_set(profile or cfg.profile_set)
    parsed = read_results(results, profile_set, model)
    if parsed.errors:
        first = "; ".join(f"line {line}: {why}" for line, why in list(parsed.errors.items())[:5])
        more = f" (+{len(parsed.errors) - 5} more)" if len(parsed.errors) > 5 else ""
        typer.echo(f"error: {results}: {len(parsed.errors)} invalid row(s), nothing onboarded — {first}{more}",
                   err=True)
        raise typer.Exit(2)
    history = ChromaHistory.from_config(cfg)
    embedder = unbatched_embedder(cfg)
    report = onboard_model(model, parsed, history, embedder, cfg.store_prompts)
    typer.echo(f"onboarded {model}: {report.updated + report.added} profile outcome(s) ({report.scored} scored; "
               f"{report.updated} merged into existing records, {report.added} new), {report.skipped} failed "
               f"call(s) skipped; history now {history.count()} records")
    if report.scored == 0:
        typer.echo("note: no answer has a quality score, so quality estimates stay at the prior", err=True)
    if not any(outcome.completion_tokens is not None for _, outcome in parsed.outcomes.values()):
        typer.echo("note: no answer has token counts, so its calls are held at the longest answer any model gives "
                   "near each query", err=True)
    if model not in {d.model for d in cfg.deployments}:
        typer.echo(f"note: no deployment in the config serves model {model!r} yet", err=True)




@profile_app.command("build")
def profile_build_command(
    out: Annotated[Path, typer.Option(help="Where to write the profile set (JSONL).")],
    config: ConfigOption = None,
    size: Annotated[int, typer.Option(min=1, help="Prompts in the set (N).")] = 200,
    clusters: Annotated[int, typer.Option(min=1, help="K-means clusters of the history (K).")] = 16,
    seed: Annotated[int, typer.Option(help="K-means seed.")] = 0,
    data: Annotated[
        Path | None, typer.Option(help="The data file the history was imported from, for prompt texts the store "
                                       "does not keep (default: the shipped sample).")
    ] = None,
) -> None:
    """Cluster the history in use and pick the profile prompts nearest each centre, in proportion to cluster size."""
    cfg = load_config(config)
    history = ChromaHistory.from_config(cfg)
    ids, vectors, texts, tasks = history.export()
    if not ids:
        typer.echo("error: the history is empty; import some first (llm-router import)", err=True)
        raise typer.Exit(2)
    if not all(texts):  # the store keeps no texts unless store_prompts is on: take them from the data file
        rows = {row.record_id: row for row in read_data(data or bundled_path()).rows}
        texts = [text or (rows[i].prompt if i in rows else None) for i, text in zip(ids, texts, strict=True)]
        tasks = [task or (rows[i].task if i in rows else None) for i, task in zip(ids, tasks, strict=True)]
    name = unbatched_embedder(cfg).name
    profile = build_profile_set(ids, vectors, texts, tasks, embedding_model=name, size=size,
                                clusters=min(clusters, len(ids)), seed=seed)
    profile.save(out)
    typer.echo(f"wrote {len(profile.prompts)} profile prompts in {profile.clusters} clusters to {out} (from "
               f"{len(ids)} history records, {sum(1 for t in texts if t)} with a text); point the router config's "
               f"profile_set at it")


# ---- end of profile -----------------------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the ``llm-router`` script."""
    try:
        app()
    # Bad input or config, or a Chroma or Redis server that is not up: say which file, field or server, no traceback.
    except (ValueError, FileNotFoundError, StoreNotConnectedError, LedgerUnavailableError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    # A Redis ledger that cannot be reached (or refuses the credentials) when a router opens it: its client's message
    # names the server.
    except redis.exceptions.RedisError as exc:
        typer.echo(f"error: budget ledger: {exc}", err=True)
        raise SystemExit(2) from None


__all__ = ["app", "load_config", "main"]

if __name__ == "__main__":
    main()
