"""The operator's report of a router: what it spent, where it sent queries, how good its estimates were.

Everything comes from the router's decision log (every decision is kept, with its status and outcome) and its
ledger (the spend of each deployment's current window):

- spend over time per deployment, cumulative within each budget window (as the ledger counts it), against the
  deployment's limit per window;
- decisions per deployment, by phase and by status;
- the estimator's error: the estimate at decision time against what the call was charged;
- the quality feedback received.

A call is *charged* when the ledger charged its actual usage: recorded, or failed after reporting usage (an answer
an output guardrail refused). Open decisions and calls that failed without usage are listed as such and count as no
spend. The decision log is this host's: with a Redis ledger shared by several hosts, ``ledger_spent`` is every host's
spend, the rest this host's decisions.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llm_router_plugin.budget import UNITS, window_index
from llm_router_plugin.config import parse_window
from llm_router_plugin.decisions import LoggedDecision
from llm_router_plugin.outcomes import CHARGED_USD

if TYPE_CHECKING:
    from llm_router_plugin.router import Router

#: The phases of a decision, in the order a router goes through them (the plot's colours follow it).
PHASES = ("warmup", "learned", "explore", "fallback")
#: The phase, and the report's status, of a query the router refused (no deployment could afford it).
DECLINED = "declined"


class SpendPoint(BaseModel):
    """A deployment's spend after one charged call.

    Attributes:
        at: epoch seconds of the decision (its budget window is the one it was decided in, as in the ledger).
        window: that budget window (0 for ``"total"``).
        window_start: epoch seconds at which that window started (for ``"total"``: when the ledger was created).
        tokens: tokens spent in the window so far, this call included.
        usd: USD spent in the window so far, this call included.
    """

    at: float
    window: int
    window_start: float
    tokens: float
    usd: float


class EstimateError(BaseModel):
    """How far the estimates at decision time were from what calls were charged, in one unit.

    Attributes:
        calls: charged calls with an estimate and a non-zero charge.
        mean_relative: mean of (estimate − actual) ÷ actual: above 0 the estimator over-estimates (holds too much),
            below 0 it under-estimates; ``None`` without calls.
        median_absolute_relative: median of |estimate − actual| ÷ actual: the typical size of the error.
    """

    calls: int
    mean_relative: float | None
    median_absolute_relative: float | None


class Call(BaseModel):
    """One decision and what became of its call.

    Attributes:
        id: the decision id.
        created_at: epoch seconds.
        deployment: the chosen deployment (``""`` for a refused query).
        phase: the decision's phase.
        status: ``"open"`` (no outcome yet), ``"recorded"``, ``"failed"`` or ``"declined"`` (a refused query).
        charged: whether the ledger charged its actual usage (see the module docstring).
        estimated: unit → the chosen deployment's estimate at decision time (empty if the log has none).
        actual: unit → what it was charged; ``None`` when not charged.
        quality: the quality score it received, if any.
        error: the error of a failed call.
    """

    id: str
    created_at: float
    deployment: str
    phase: str
    status: str
    charged: bool
    estimated: dict[str, float]
    actual: dict[str, float] | None
    quality: float | None
    error: str | None


class DeploymentReport(BaseModel):
    """One deployment's part of the report.

    Attributes:
        name: deployment name.
        model: model profile.
        window: its budget window (``""`` for a deployment the config no longer has).
        limits: unit → budget per window.
        decisions: decisions that chose it.
        phases: phase → decisions.
        statuses: status → decisions.
        spent: unit → what its charged calls spent (over the report's period, every window).
        ledger_spent: unit → the ledger's spend in its current window (expired holds and other hosts' calls
            included).
        spend: its spend within each window after every charged call, oldest first.
        estimate_error: unit → the estimator's error on its calls.
        feedback: calls with a quality score.
        mean_quality: their mean score (``None`` without any).
    """

    name: str
    model: str
    window: str
    limits: dict[str, float]
    decisions: int
    phases: dict[str, int]
    statuses: dict[str, int]
    spent: dict[str, float]
    ledger_spent: dict[str, float]
    spend: list[SpendPoint]
    estimate_error: dict[str, EstimateError]
    feedback: int
    mean_quality: float | None


class RouterReport(BaseModel):
    """A router's report.

    Attributes:
        generated_at: epoch seconds.
        since: epoch seconds of the earliest decision covered (``None``: all of them).
        decisions: decisions covered.
        statuses: status → decisions.
        estimate_error: unit → the estimator's error over every deployment's calls.
        deployments: per deployment, the configured ones first.
        calls: every decision covered, oldest first.
    """

    generated_at: float
    since: float | None
    decisions: int
    statuses: dict[str, int]
    estimate_error: dict[str, EstimateError]
    deployments: list[DeploymentReport]
    calls: list[Call]


def build_report(router: Router, since: float | None = None, now: float | None = None) -> RouterReport:
    """Report a router's decisions, spend and estimates (reads only: no decision, no reservation).

    Args:
        router: the router (its decision log, ledger, deployments and prices).
        since: cover only decisions made at or after this epoch second (``None``: all). A spend point still counts
            its window's earlier calls.
        now: the clock, for the ledger's current windows (default: the time now).

    Returns:
        The report.
    """
    now = time.time() if now is None else now
    read = router.decisions.entries(_window_start(router, since))
    calls = {logged.id: _call(router, logged) for logged in read}
    covered = [calls[logged.id] for logged in read if since is None or logged.created_at >= since]
    profiles = {logged.deployment: logged.profile for logged in read}
    deployments = [
        _deployment(router, name, profiles.get(name, ""), covered, list(calls.values()), since, now)
        # A refused query was logged without a deployment: it is a decision of the report, not a deployment's.
        for name in dict.fromkeys([*(d.name for d in router.config.deployments),
                                   *(c.deployment for c in covered if c.deployment)])
    ]
    return RouterReport(
        generated_at=now, since=since, decisions=len(covered), statuses=_counts(c.status for c in covered),
        estimate_error=_estimate_errors(covered), deployments=deployments, calls=covered,
    )


def _window_start(router: Router, since: float | None) -> float | None:
    """The earliest start of the budget windows ``since`` falls in: their spend before ``since`` counts toward it."""
    if since is None:
        return None
    anchor, starts = router.ledger.anchor, []
    for deployment in router.config.deployments:
        seconds = deployment.window_seconds
        if seconds is None:
            return None  # a budget that never resets: every call counts
        starts.append(anchor + window_index(anchor, seconds, since) * seconds)
    return min([since, *starts])


def _call(router: Router, logged: LoggedDecision) -> Call:
    outcome = logged.outcome
    tokens = int(outcome.get("prompt_tokens") or 0) + int(outcome.get("completion_tokens") or 0)
    # As the ledger settles: a failure without usage is released, a failure with usage (answered after all) charged.
    charged = logged.status == "recorded" or (logged.status == "failed" and tokens > 0)
    estimate = logged.estimates.get(logged.deployment, {})
    return Call(
        id=logged.id, created_at=logged.created_at, deployment=logged.deployment, phase=logged.phase,
        # A refused query stays "open" in the log (no call will close it): it is neither open nor charged.
        status=DECLINED if logged.phase == DECLINED else logged.status, charged=charged,
        estimated={u: float(estimate[u]) for u in UNITS if u in estimate},
        actual={"tokens": float(tokens), "usd": _charged_usd(router, logged)} if charged else None,
        quality=outcome.get("quality"), error=outcome.get("error"),
    )


def _charged_usd(router: Router, logged: LoggedDecision) -> float:
    """The USD the ledger charged a call: as kept at record time (a log from before that: priced again now)."""
    charged = logged.outcome.get(CHARGED_USD)
    return float(charged) if charged is not None else router.outcomes.usd_of(logged, logged.outcome)


def _deployment(router: Router, name: str, model: str, covered: Sequence[Call], read: Sequence[Call],
                since: float | None, now: float) -> DeploymentReport:
    config = next((d for d in router.config.deployments if d.name == name), None)
    mine = [c for c in covered if c.deployment == name]
    charged = [c for c in mine if c.actual is not None]
    scores = [c.quality for c in mine if c.quality is not None]
    window_s = None if config is None else config.window_seconds
    ledger_spent = dict.fromkeys(UNITS, 0.0)
    if config is not None:
        [(ledger_spent, _)] = router.ledger.usages([(name, window_index(router.ledger.anchor, window_s, now))], now)
    return DeploymentReport(
        name=name, model=model if config is None else config.model, window="" if config is None else config.window,
        limits={} if config is None else config.budget_limits(), decisions=len(mine),
        phases=_counts(c.phase for c in mine), statuses=_counts(c.status for c in mine),
        spent={u: math.fsum(c.actual[u] for c in charged if c.actual is not None) for u in UNITS},
        ledger_spent=ledger_spent,
        spend=[p for p in _spend(router, [c for c in read if c.deployment == name], window_s)
               if since is None or p.at >= since],
        estimate_error=_estimate_errors(mine), feedback=len(scores),
        mean_quality=statistics.fmean(scores) if scores else None,
    )


def _spend(router: Router, calls: Sequence[Call], window_s: float | None) -> list[SpendPoint]:
    """Cumulative spend within each budget window after every charged call (the calls are oldest first)."""
    points: list[SpendPoint] = []
    for call in calls:
        if call.actual is None:
            continue
        window = window_index(router.ledger.anchor, window_s, call.created_at)
        before = points[-1] if points and points[-1].window == window else None
        points.append(SpendPoint(at=call.created_at, window=window,
                                 window_start=router.ledger.anchor + window * (window_s or 0.0),
                                 tokens=(before.tokens if before else 0.0) + call.actual["tokens"],
                                 usd=(before.usd if before else 0.0) + call.actual["usd"]))
    return points


def _estimate_errors(calls: Sequence[Call]) -> dict[str, EstimateError]:
    out = {}
    for unit in UNITS:
        errors = [(c.estimated[unit] - c.actual[unit]) / c.actual[unit] for c in calls
                  if c.actual is not None and c.actual[unit] > 0 and unit in c.estimated]
        out[unit] = EstimateError(
            calls=len(errors), mean_relative=statistics.fmean(errors) if errors else None,
            median_absolute_relative=statistics.median(abs(e) for e in errors) if errors else None,
        )
    return out


def _counts(values: Any) -> dict[str, int]:
    return dict(Counter(values))


def parse_since(text: str, now: float) -> float:
    """The epoch second a ``--since`` value names.

    Args:
        text: a duration back from ``now`` (``"30m"``, ``"12h"``, ``"7d"``, ``"1w"``) or an ISO 8601 date or date
            and time (local time unless it names its offset).
        now: the clock.

    Returns:
        Epoch seconds.

    Raises:
        ValueError: neither a duration nor a date (the message names ``since``).
    """
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        seconds = parse_window(text)
    except ValueError:
        seconds = None
    if seconds is None:
        raise ValueError(f"since: expected a duration such as '24h' or '7d', or an ISO date, got {text!r}")
    try:
        datetime.fromtimestamp(now - seconds)  # the report prints it as a date
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"since: {text!r} goes back before any date") from None
    return now - seconds


# ------------------------------------------------------------------------------------------- table

def format_report(report: RouterReport) -> str:
    """A report as a small table: one row per deployment."""
    statuses = ", ".join(f"{n} {s}" for s, n in report.statuses.items())
    since = "" if report.since is None else f" since {_time(report.since)}"
    usd = report.estimate_error["usd"]
    lines = [f"{report.decisions} decisions: {statuses or 'none'}{since}; cost estimates {_error(usd)}", "",
             f"{'deployment':<36} {'calls':>6} {'open':>5} {'failed':>6} {'spent $':>10} {'window':>7} "
             f"{'spent in window':>17} {'budget':>12} {'est. error':>10} {'feedback':>9}  phases"]
    for d in report.deployments:
        unit = "usd" if "usd" in d.limits or "tokens" not in d.limits else "tokens"
        feedback = f"{d.mean_quality:.2f} ({d.feedback})" if d.mean_quality is not None else "-"
        error = d.estimate_error["usd"].mean_relative
        lines.append(
            f"{d.name:<36} {d.decisions:>6} {d.statuses.get('open', 0):>5} {d.statuses.get('failed', 0):>6} "
            f"{d.spent['usd']:>10.4g} {d.window or '-':>7} {d.ledger_spent[unit]:>13.6g} {unit:<3} "
            f"{d.limits.get(unit, math.inf):>12.6g} {'-' if error is None else f'{error:+.0%}':>10} {feedback:>9}  "
            + ", ".join(f"{phase} {n}" for phase, n in d.phases.items())
        )
    return "\n".join(lines)


def _error(error: EstimateError) -> str:
    if error.mean_relative is None or error.median_absolute_relative is None:
        return "not checked yet (no charged call)"
    return (f"off by {error.mean_relative:+.0%} on average, median |error| {error.median_absolute_relative:.0%} "
            f"({error.calls} calls)")


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


# ------------------------------------------------------------------------------------------- files

Reports = RouterReport | Mapping[str, RouterReport]


def write_json(reports: Reports, path: str | Path) -> None:
    """Write every number of a report, or of each model group's (``{group: report}``), as JSON (folders created).

    Args:
        reports: one router's report, or a model group → its router's report.
        path: the JSON file.
    """
    from llm_router_plugin.bench.scale import write_json as write_mapping

    write_mapping(reports.model_dump(mode="json") if isinstance(reports, RouterReport)
                  else {group: r.model_dump(mode="json") for group, r in reports.items()}, Path(path))


def write_plot(reports: Reports, path: str | Path) -> None:
    """Plot a report as four panels: spend against budget over time, decisions by phase, estimated against actual
    cost, feedback; the panels of each model group's report below the previous group's.

    Args:
        reports: one router's report, or a model group → its router's report (the panels' titles name the group).
        path: the image file (folders created; its suffix picks the format).
    """
    if isinstance(reports, RouterReport):
        reports = {"router": reports}
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    from llm_router_plugin.bench.report import save_figure

    fig, axes = plt.subplots(2 * len(reports), 2, figsize=(14, 9 * len(reports)), dpi=110, squeeze=False)
    for row, (title, report) in enumerate(reports.items()):
        colours = {d.name: plt.get_cmap("tab10" if len(report.deployments) <= 10 else "tab20")(i)
                   for i, d in enumerate(report.deployments)}
        top, bottom = axes[2 * row], axes[2 * row + 1]
        _plot_spend(top[0], report, colours, title)
        _plot_decisions(top[1], report, title)
        _plot_estimates(bottom[0], report, colours, title)
        _plot_feedback(bottom[1], report, colours, title)
    save_figure(fig, list(axes.flat), path)


def _spend_unit(report: RouterReport) -> str:
    """USD when a deployment has a USD budget (or none has a token budget), else tokens."""
    limited = {u for d in report.deployments for u in d.limits}
    return "usd" if "usd" in limited or "tokens" not in limited else "tokens"


def _plot_spend(ax: Any, report: RouterReport, colours: Mapping[str, Any], title: str) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    unit = _spend_unit(report)
    values = []
    for d in report.deployments:
        times, spent = [], []
        for i, point in enumerate(d.spend):
            if i == 0 or point.window != d.spend[i - 1].window:  # the window starts from nothing
                times.append(datetime.fromtimestamp(max(point.window_start, d.spend[i - 1].at if i else -math.inf)))
                spent.append(0.0)
            times.append(datetime.fromtimestamp(point.at))
            spent.append(getattr(point, unit))
        if times:
            ax.step(times, spent, where="post", color=colours[d.name], label=d.name)
        if unit in d.limits:
            ax.axhline(d.limits[unit], color=colours[d.name], linestyle="--", linewidth=1)
        values += [v for v in spent if v > 0] + ([d.limits[unit]] if unit in d.limits else [])
    if values and max(values) > 20 * min(values):
        ax.set_yscale("symlog", linthresh=min(values))  # budgets far apart: the small ones would lie flat at 0
        ax.set_ylim(0, 2 * max(values))  # the highest budget line clear of the frame
    else:
        ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3)  # below: lines fill the panel
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    else:  # no time axis to show (it would be dates of 1970)
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no charged call yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{title}: spend per budget window (dashed: budget)")
    ax.set_ylabel("USD" if unit == "usd" else "tokens")


def _plot_decisions(ax: Any, report: RouterReport, title: str) -> None:
    names = [d.name for d in report.deployments]
    left = [0] * len(names)
    # One colour per phase in every report, in the order a router goes through them.
    for i, phase in enumerate(dict.fromkeys([*PHASES, *(p for d in report.deployments for p in d.phases)])):
        counts = [d.phases.get(phase, 0) for d in report.deployments]
        if any(counts):
            ax.barh(names, counts, left=left, label=phase, color=f"C{i}")
            left = [a + b for a, b in zip(left, counts, strict=True)]
    for d, total in zip(report.deployments, left, strict=True):
        unserved = ", ".join(f"{d.statuses[s]} {s}" for s in ("failed", "open") if d.statuses.get(s))
        if unserved:  # not spent: the other panels leave them out
            ax.annotate(f" {unserved}", (total, d.name), va="center", fontsize=8)
    ax.set_xlim(0, 1.3 * max(left, default=0) or 1)  # room for the counts written after the bars
    ax.invert_yaxis()  # the configured order, top down
    if any(left):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(PHASES))
    ax.set_title(f"{title}: decisions per deployment, by phase")
    ax.set_xlabel("decisions")


def _plot_estimates(ax: Any, report: RouterReport, colours: Mapping[str, Any], title: str) -> None:
    pairs = [(c.deployment, c.estimated["usd"], c.actual["usd"]) for c in report.calls
             if c.actual is not None and c.actual["usd"] > 0 and c.estimated.get("usd", 0) > 0]
    for name in colours:
        mine = [p for p in pairs if p[0] == name]
        if not mine:
            continue
        ax.scatter([p[2] for p in mine], [p[1] for p in mine], s=12, alpha=0.6, color=colours.get(name), label=name)
    if pairs:
        low = min(min(p[1], p[2]) for p in pairs)
        high = max(max(p[1], p[2]) for p in pairs)
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="estimate = actual")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_title(f"{title}: estimated vs actual cost per call ({_error(report.estimate_error['usd'])})",
                 fontsize=9)
    ax.set_xlabel("actual USD")
    ax.set_ylabel("estimated USD")


def _plot_feedback(ax: Any, report: RouterReport, colours: Mapping[str, Any], title: str) -> None:
    scored = [d for d in report.deployments if d.mean_quality is not None]
    ax.barh([d.name for d in scored], [d.mean_quality for d in scored], color=[colours[d.name] for d in scored])
    for d in scored:
        ax.annotate(f" n={d.feedback}", (d.mean_quality or 0.0, d.name), va="center", fontsize=8)
    if not scored:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no quality feedback yet", ha="center", va="center", transform=ax.transAxes)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_title(f"{title}: quality feedback per deployment (mean score)")
    ax.set_xlabel("mean quality score")
