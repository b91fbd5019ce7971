"""Benchmark output: a table per (seed, split), the mean table, the JSON file and the quality-vs-budget plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_router_plugin.bench.harness import RunResult
from llm_router_plugin.bench.runner import BASELINES, C_HAT_OPT, C_OPT, OPTIMA, POLICIES, BenchResult, Run
from llm_router_plugin.bench.unseen import UNSEEN_POLICIES, UnseenResult

#: Columns of every table: key → (header, format).
COLUMNS = {
    "quality": ("quality", "{:>9.1f}"),
    "cost": ("cost $", "{:>9.4f}"),
    "served": ("served", "{:>7.0f}"),
    "quality_per_cost": ("quality/$", "{:>10.0f}"),
    "vs_c_hat_opt": ("÷ Ĉ_opt", "{:>8.3f}"),
    "vs_c_opt": ("÷ C_opt", "{:>8.3f}"),
    "overspend_usd": ("overspend $", "{:>12.5f}"),
    "overspend_pct": ("overspend %", "{:>12.1f}"),
}
_LABEL_WIDTH = 31


def row_ids(run: Run) -> list[str]:
    """The table rows of a run: the policies in table order, then the optima."""
    return [p for p in POLICIES if p in run.results] + [C_HAT_OPT, C_OPT]


def label(policy: str) -> str:
    """Display name of a policy or optimum id."""
    return POLICIES.get(policy) or OPTIMA[policy]


def metrics(run: Run, policy: str) -> dict[str, float]:
    """One table row: the result's numbers plus its ratios to the run's offline optima."""
    result: RunResult = run.results[policy]
    c_hat, c_opt = run.results[C_HAT_OPT].quality, run.results[C_OPT].quality
    return {
        "quality": result.quality, "cost": result.cost, "served": float(result.served),
        "quality_per_cost": result.quality_per_cost,
        "vs_c_hat_opt": result.quality / c_hat if c_hat > 0 else float("nan"),
        "vs_c_opt": result.quality / c_opt if c_opt > 0 else float("nan"),
        "overspend_usd": result.overspend_usd, "overspend_pct": result.overspend_pct,
    }


def mean_metrics(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per policy, the mean of every column over the runs, except the overspend columns: their maximum.

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("runs: nothing to average")
    out: dict[str, dict[str, float]] = {}
    for policy in row_ids(runs[0]):
        rows = [metrics(run, policy) for run in runs if policy in run.results]
        out[policy] = {}
        for key in COLUMNS:
            values = [row[key] for row in rows]
            out[policy][key] = float(np.max(values) if key.startswith("overspend") else np.mean(values))
    return out


def _table(rows: dict[str, dict[str, float]]) -> list[str]:
    header = f"{'policy':<{_LABEL_WIDTH}}" + "".join(
        f"{title:>{len(fmt.format(0.0))}}" for title, fmt in COLUMNS.values()
    )
    lines = [header, "-" * len(header)]
    for policy, row in rows.items():
        cells = "".join(fmt.format(row[key]) for key, (_, fmt) in COLUMNS.items())
        lines.append(f"{label(policy):<{_LABEL_WIDTH}}{cells}")
    return lines


def run_table(run: Run) -> str:
    """The table of one (seed, split)."""
    title = (f"seed {run.seed} · split {run.split} · budget ×{run.multiplier:g} "
             f"(total ${run.budgets.sum():.4f})")
    if run.port_alpha is not None:
        title += f" · PORT α = {run.port_alpha:g}"
    return "\n".join([title, *_table({p: metrics(run, p) for p in row_ids(run)})])


def mean_table(result: BenchResult) -> str:
    """The mean table over every (seed, split) of the main budget, with a line on what it measured."""
    runs = result.runs
    alphas = sorted({r.port_alpha for r in runs if r.port_alpha is not None})
    notes = [
        f"MEAN over {len(runs)} runs (seeds {','.join(map(str, result.options.seeds))} × splits "
        f"{','.join(result.options.splits)}), budget ×{result.options.multiplier:g}, k={result.options.k}, "
        f"embedder {result.embedder}; overspend columns: maximum over the runs",
        f"data {result.problem.source.name}: {result.problem.size} complete rows ({result.problem.dropped} dropped), "
        f"{len(result.problem.models)} models, {result.history_size} history / {result.test_size} test queries; "
        f"{result.problem.cost_note}",
    ]
    if alphas:
        notes.append(f"PORT-reference: best α of its grid per run, from {{{', '.join(f'{a:g}' for a in alphas)}}}")
    return "\n".join([*notes, *_table(mean_metrics(runs))])


def _run_dict(run: Run, models: Sequence[str]) -> dict[str, Any]:
    return {
        "seed": run.seed, "split": run.split, "budget_multiplier": run.multiplier,
        "budgets_usd": dict(zip(models, run.budgets.tolist(), strict=True)),
        "port_alpha": run.port_alpha, "c_opt_lp_objective": run.c_opt_lp, "c_hat_opt_lp_objective": run.c_hat_opt_lp,
        "seconds": run.seconds,
        "results": {p: {**run.results[p].to_dict(), **metrics(run, p)} for p in row_ids(run)},
    }


def to_json(result: BenchResult) -> dict[str, Any]:
    """Everything the benchmark measured, JSON-ready."""
    models = list(result.problem.models)
    options = result.options
    return {
        "data": {
            "path": str(result.problem.source), "rows": result.problem.size, "dropped": result.problem.dropped,
            "models": models, "cost_note": result.problem.cost_note, "history_size": result.history_size,
            "test_size": result.test_size,
        },
        "options": {
            "seeds": list(options.seeds), "splits": list(options.splits), "k": options.k,
            "budget_multiplier": options.multiplier, "policies": list(options.policies),
            "plot_multipliers": list(options.plot_multipliers), "embedder": result.embedder,
            "router_estimator": options.router.estimator.model_dump(),
            "router_overrides": {k: str(v) for k, v in options.router.overrides.items()},
            "expected_queries": "the test stream's length",
        },
        "labels": {p: label(p) for p in row_ids(result.runs[0])} if result.runs else {},
        "mean": mean_metrics(result.runs) if result.runs else {},
        "runs": [_run_dict(r, models) for r in result.runs],
        "sweep": [_run_dict(r, models) for r in result.sweep],
        "wall_seconds": result.seconds,
    }


def write_json(result: BenchResult, path: str | Path) -> None:
    """Write :func:`to_json` to ``path`` (folders created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(to_json(result), indent=2, default=_finite), encoding="utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def best_baseline(runs: Sequence[Run]) -> str | None:
    """The baseline with the highest mean quality over ``runs`` (``None`` if none ran)."""
    means = mean_metrics(runs) if runs else {}
    ran = [p for p in BASELINES if p in means]
    return max(ran, key=lambda p: means[p]["quality"]) if ran else None


def sweep_curves(result: BenchResult) -> dict[str, list[tuple[float, float]]]:
    """Per plotted policy, (budget multiplier, mean quality over the splits) points of the sweep."""
    wanted = [p for p in ("ours", "port", best_baseline(result.runs), C_HAT_OPT, C_OPT) if p]
    curves: dict[str, list[tuple[float, float]]] = {}
    for policy in wanted:
        points = []
        for multiplier in sorted({r.multiplier for r in result.sweep}):
            values = [r.results[policy].quality for r in result.sweep
                      if r.multiplier == multiplier and policy in r.results]
            if values:
                points.append((multiplier, float(np.mean(values))))
        if points:
            curves[policy] = points
    return curves


def write_plot(result: BenchResult, path: str | Path) -> None:
    """Plot quality against the budget multiplier for ours, PORT-reference, the best baseline and the optima.

    Raises:
        ValueError: the benchmark ran no budget sweep.
    """
    curves = sweep_curves(result)
    if not curves:
        raise ValueError("plot: the benchmark ran no budget sweep (plot_multipliers is empty)")
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for policy, points in curves.items():
        xs, ys = zip(*points, strict=True)
        optimum = policy in OPTIMA
        ax.plot(xs, ys, linestyle="--" if optimum else "-", marker="" if optimum else "o",
                color="grey" if optimum else None, alpha=0.7 if optimum else 1.0, label=label(policy))
    seed = result.options.seeds[0]
    ax.set_xlabel("budget multiplier (1.0 = every test query on the cheapest model)")
    ax.set_ylabel("quality served (mean over splits)")
    ax.set_title(f"{result.problem.source.name}: quality vs budget (seed {seed}, k={result.options.k})")
    save_figure(fig, ax, path)


def save_figure(fig: Any, ax: Any, path: str | Path) -> None:
    """Finish a matplotlib figure (grid and legend on each axes, layout) and write it as ``path`` (folders created).

    Args:
        fig: the figure.
        ax: its axes, or a list of its axes (panels); an axes without labelled lines, or with its own legend
            already, gets no legend here.
        path: the image file (its suffix picks the format).
    """
    import matplotlib.pyplot as plt

    for one in ax if isinstance(ax, list) else [ax]:
        one.grid(alpha=0.3)
        if one.get_legend() is None and one.get_legend_handles_labels()[0]:
            one.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- unseen models

def unseen_summary(result: UnseenResult) -> dict[str, dict[str, float]]:
    """Per policy of the unseen-model protocol: means over every (trial, split) and the worst trial's ratio.

    ``vs_full`` is the quality ÷ ours-full of the same run, averaged; ``worst_trial_vs_full`` the lowest trial
    mean of that ratio; ``deferral_area`` the mean normalised area under the unbudgeted deferral curve.
    """
    out: dict[str, dict[str, float]] = {}
    for policy in result.options.policies:
        per_trial = []
        rows = []
        for trial in result.trials:
            ratios = []
            for runs in trial.results.values():
                full, mine, c_opt = runs["ours-full"].quality, runs[policy], runs["c_opt"].quality
                ratios.append(mine.quality / full if full > 0 else float("nan"))
                rows.append((mine.quality, float(mine.served), mine.quality / c_opt if c_opt > 0 else float("nan"),
                             mine.overspend_usd))
            per_trial.append(float(np.mean(ratios)))
        quality, served, vs_c_opt, over = (np.array(col) for col in zip(*rows, strict=True))
        out[policy] = {
            "quality": float(quality.mean()), "served": float(served.mean()), "vs_full": float(np.mean(per_trial)),
            "worst_trial_vs_full": float(np.min(per_trial)), "vs_c_opt": float(vs_c_opt.mean()),
            "overspend_usd": float(over.max()),
            "deferral_area": float(np.mean([t.areas[policy] for t in result.trials])),
        }
    return out


def unseen_table(result: UnseenResult) -> str:
    """The unseen-model table, with a line on what ran."""
    options = result.options
    problem = result.problem
    unseen = "; ".join(f"{t.seed}: {', '.join(t.unseen)}" for t in result.trials)
    lines = [
        f"UNSEEN MODELS: {len(result.trials)} trials (seeds {','.join(map(str, options.seeds))}) × splits "
        f"{','.join(options.splits)}, {options.fraction:.2g} of the models unseen, profile set of "
        f"{options.profile_size} prompts in {options.clusters} clusters, budget ×{options.multiplier:g}, "
        f"k={options.k}, embedder {result.embedder}",
        f"data {problem.source.name}: {problem.size} complete rows, {len(problem.models)} models; "
        f"{problem.cost_note}",
        f"unseen per trial — {unseen}",
    ]
    header = (f"{'policy':<52}{'quality':>9}{'÷ full':>8}{'worst trial':>12}{'served':>8}{'÷ C_opt':>8}"
              f"{'overspend $':>12}{'deferral AUC':>13}")
    lines += [header, "-" * len(header)]
    for policy, row in unseen_summary(result).items():
        lines.append(f"{UNSEEN_POLICIES[policy]:<52}{row['quality']:>9.1f}{row['vs_full']:>8.3f}"
                     f"{row['worst_trial_vs_full']:>12.3f}{row['served']:>8.0f}{row['vs_c_opt']:>8.3f}"
                     f"{row['overspend_usd']:>12.5f}{row['deferral_area']:>13.4f}")
    return "\n".join(lines)


def unseen_json(result: UnseenResult) -> dict[str, Any]:
    """Everything the unseen-model benchmark measured, JSON-ready."""
    options = result.options
    return {
        "data": {"path": str(result.problem.source), "rows": result.problem.size,
                 "models": list(result.problem.models), "cost_note": result.problem.cost_note},
        "options": {"seeds": list(options.seeds), "splits": list(options.splits), "fraction": options.fraction,
                    "profile_size": options.profile_size, "clusters": options.clusters, "k": options.k,
                    "budget_multiplier": options.multiplier, "embedder": result.embedder,
                    "policies": list(options.policies), "router_estimator": options.router.estimator.model_dump()},
        "labels": dict(UNSEEN_POLICIES),
        "mean": unseen_summary(result),
        "trials": [{
            "seed": t.seed, "unseen": list(t.unseen), "profile_size": t.profile_size, "deferral_area": t.areas,
            "deferral_curves": t.curves,
            "runs": {split: {p: r.to_dict() for p, r in runs.items()} for split, runs in t.results.items()},
        } for t in result.trials],
        "wall_seconds": result.seconds,
    }


def write_unseen_json(result: UnseenResult, path: str | Path) -> None:
    """Write :func:`unseen_json` to ``path`` (folders created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(unseen_json(result), indent=2, default=_finite), encoding="utf-8")
