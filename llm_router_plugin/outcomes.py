"""Outcomes: what happens to a decision after its call ends.

Recording an outcome settles the decision's reservation in the budget ledger with the actual usage, closes the
decision in the decision log, and learns the outcome into history; feedback attaches a quality score, here or (Redis
ledger) to a decision another router of the namespace made. Each store may be away when an outcome arrives, and none
of them may lose it:

- a history store that cannot be reached queues the write in the decision log (``history_pending``), written, oldest
  first, once the store is back;
- a budget ledger that cannot be reached fails the record (the caller may retry) and queues the outcome in the
  decision log (``unsettled``), settled, oldest first, once the ledger is back, even if the caller never calls again.

The router retries both queues at the start of every route and record (:meth:`OutcomeRecorder.retry_queued`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from llm_router_plugin.budget import BudgetLedger, Settlement
from llm_router_plugin.decisions import DecisionLog, LoggedDecision
from llm_router_plugin.errors import LedgerUnavailableError, UnknownDecisionError
from llm_router_plugin.history import STORE_UNREACHABLE, ChromaHistory, HistoryRecord, ModelOutcome
from llm_router_plugin.learning import LearningStore
from llm_router_plugin.validation import optional_amount, score, token_count

if TYPE_CHECKING:
    from llm_router_plugin.config import RouterConfig
    from llm_router_plugin.metrics import RouterMetrics
    from llm_router_plugin.pricing import Price

#: The key of a closed decision's outcome that holds the USD the ledger was charged for its call.
CHARGED_USD = "charged_usd"
#: Seconds between two attempts to write the outcomes queued in the decision log by a history outage (with
#: ``history_batch_s``, queued outcomes are written that often instead, if sooner).
HISTORY_RETRY_S = 5.0
#: Queued outcomes written per attempt (one Chroma call), so that a route never waits on a long backlog.
HISTORY_RETRY_BATCH = 256
#: Seconds a process may hold the decision log's history-writing turn (freed sooner when its batch is written).
HISTORY_FLUSH_LEASE_S = 60.0
_FLUSH_LEASE = "history-flush"
#: Seconds between two attempts to settle the outcomes a ledger outage left unsettled (queued in the decision log).
RECORD_RETRY_S = 5.0
#: Queued outcomes settled per attempt.
RECORD_RETRY_BATCH = 64
_log = logging.getLogger("llm_router_plugin")
#: A score cannot be written to a history record now: the record is not there yet, or the store is unreachable.
_NOT_WRITABLE: tuple[type[Exception], ...] = (KeyError, *STORE_UNREACHABLE)


class OutcomeRecorder:
    """Settles, closes and learns the outcomes of a router's decisions, and takes feedback on them.

    Args:
        config: the router's config (``learn_online`` says whether outcomes join history).
        ledger: the budget ledger the decisions' reservations are held in.
        decisions: the decision log (also the two retry queues).
        history: the history store outcomes are learned into.
        learning: the learning store shared with the other routers (feedback on their decisions, and theirs on ours).
        prices: deployment name → its price (``None``: unpriced), for calls that report no cost.
        clock: epoch-seconds clock the ledger is settled at.
        warn_learning: told when the shared learning state cannot be read (the router rate-limits the warning).
        metrics: told of every decision an outcome closes (``None``: no metrics).
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        ledger: BudgetLedger,
        decisions: DecisionLog,
        history: ChromaHistory,
        learning: LearningStore,
        prices: Mapping[str, Price | None],
        clock: Callable[[], float],
        warn_learning: Callable[[LedgerUnavailableError], None],
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.decisions = decisions
        self.history = history
        self.learning = learning
        self._prices = dict(prices)
        self._clock = clock
        self._warn_learning = warn_learning
        self._metrics = metrics
        self._history_retry_at = -math.inf
        self._history_retry_lock = threading.Lock()
        self._owner = uuid.uuid4().hex  # this process's name for the decision log's leases
        self._settle_retry_at = -math.inf
        self._settle_retry_lock = threading.Lock()

    def retry_queued(self) -> None:
        """Write the history writes an outage queued, then settle the outcomes a ledger outage left unsettled.

        Each at most every few seconds (:data:`HISTORY_RETRY_S`, :data:`RECORD_RETRY_S`) and a batch at a time, so
        that a route never waits on a long backlog.
        """
        self._retry_history_writes()
        self._settle_queued()

    def record(
        self,
        decision_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None = None,
        latency_s: float | None = None,
        error: str | None = None,
        quality: float | None = None,
        ttft_s: float | None = None,
    ) -> Settlement | None:
        """Check an outcome, then settle the decision, close it and learn it (see :meth:`Router.record`).

        Args:
            decision_id: the decision.
            prompt_tokens: actual prompt tokens.
            completion_tokens: actual completion tokens.
            cost_usd: actual cost (``None``: priced from the tokens).
            latency_s: call latency.
            error: the error message of a failed call.
            quality: a score in [0, 1] (``None``: a score given by feedback, if any).
            ttft_s: time to first token.

        Returns:
            The settlement, or ``None`` if the decision was already recorded or the call failed without usage.

        Raises:
            UnknownDecisionError: no such decision.
            ValueError: an argument is not valid (the message names it; nothing is written).
            LedgerUnavailableError: the budget ledger cannot be reached: the outcome is queued, and settled once the
                ledger is back.
        """
        outcome: dict[str, Any] = {
            "prompt_tokens": token_count("prompt_tokens", prompt_tokens),
            "completion_tokens": token_count("completion_tokens", completion_tokens),
            "cost_usd": optional_amount("cost_usd", cost_usd),
            "latency_s": optional_amount("latency_s", latency_s),
            "error": None if error is None else str(error),
            "quality": None if quality is None else score("quality", quality),
            "ttft_s": optional_amount("ttft_s", ttft_s),
        }
        self.retry_queued()  # first: queued outcomes are older than this one
        try:
            return self._record(decision_id, outcome)
        except LedgerUnavailableError:
            # Kept, so that the spend is counted once the ledger is back even if the caller never calls again (a
            # proxy's success callback does not).
            self.decisions.queue_unsettled(decision_id, outcome)
            raise

    def _record(self, decision_id: str, outcome: dict[str, Any]) -> Settlement | None:
        error, quality = outcome["error"], outcome["quality"]
        outcome = dict(outcome)  # the queued copy keeps what the caller reported
        logged = self.decisions.get(decision_id)
        if logged is None:
            raise UnknownDecisionError(f"decision_id: unknown decision {decision_id!r}")
        tokens = outcome["prompt_tokens"] + outcome["completion_tokens"]
        # A failure report does not close a decision for good: usage reported after it (the call was answered
        # after all) is charged. A recorded decision is closed for good.
        if logged.status == "recorded" or (logged.status == "failed" and tokens == 0):
            return None
        if outcome["quality"] is None:  # feedback that came before this record, to this router or another host's
            outcome["quality"] = logged.outcome.get("quality")
            if outcome["quality"] is None:
                outcome["quality"] = self._feedback_from_elsewhere(decision_id)
        if error is not None and tokens == 0:
            self.ledger.release(decision_id)
            if self.decisions.close_decision(decision_id, "failed", outcome):
                self._closed(logged, "failed", outcome, {})
            return None
        actual = {"tokens": float(tokens), "usd": self.usd_of(logged, outcome)}
        # Kept with the outcome: the price it was charged at may change (config, history) before a report reads it.
        outcome[CHARGED_USD] = actual["usd"]
        settlement = self.ledger.settle(decision_id, actual, self._clock())
        if settlement is None and logged.status == "failed":
            return None  # failed with usage before: charged then
        if not self.decisions.close_decision(decision_id, "failed" if error else "recorded", outcome, logged.status):
            return None  # a concurrent record of the same decision closed it first (the ledger charged once)
        if settlement is None:  # an earlier, interrupted record settled the ledger already
            settlement = Settlement(logged.deployment, {}, actual, False)
        self._closed(logged, "failed" if error else "recorded", outcome, actual)
        if error is None and self.config.learn_online and logged.embedding.size:
            self._learn(replace(logged, outcome=outcome))
            if quality is None:
                # Feedback that landed between the read above and the close is in the log, not in what was learned.
                closed = self.decisions.get(decision_id)
                late = closed.outcome.get("quality") if closed is not None else None
                if late is not None and late != outcome["quality"]:
                    self._learn_quality(decision_id, logged.profile, late)
        return settlement

    def _closed(self, logged: LoggedDecision, status: str, outcome: dict[str, Any], actual: dict[str, float]) -> None:
        """Tell the metrics of a decision this outcome closed (counted once: late usage of a failed call is not)."""
        if self._metrics is None or logged.status != "open":
            return
        measured = dict(actual)
        if outcome.get("cost_usd") is None and self._prices.get(logged.deployment) is None:
            measured.pop("usd", None)  # charged at the decision's estimate: nothing was measured
        self._metrics.closed(logged, status, measured)

    def _settle_queued(self) -> None:
        """Settle the outcomes queued by a ledger outage, oldest first, once the ledger answers again.

        At most every :data:`RECORD_RETRY_S` seconds and :data:`RECORD_RETRY_BATCH` outcomes, by one caller at a time.
        Recording is idempotent, so an outcome the caller also recorded again is charged once.
        """
        now = time.monotonic()
        if now < self._settle_retry_at or not self._settle_retry_lock.acquire(blocking=False):
            return
        try:
            self._settle_retry_at = now + RECORD_RETRY_S
            settled = 0
            for decision_id, outcome in self.decisions.unsettled(RECORD_RETRY_BATCH):
                try:
                    self._record(decision_id, outcome)
                except LedgerUnavailableError:
                    return  # still away: the rest waits too
                self.decisions.drop_unsettled(decision_id, outcome)
                settled += 1
            if settled:
                _log.info("settled %d outcome(s) reported while the budget ledger was unreachable", settled)
        finally:
            self._settle_retry_lock.release()

    def usd_of(self, logged: LoggedDecision, outcome: dict[str, Any]) -> float:
        """USD a decision's call is charged: the cost it reported, else its tokens at the deployment's price, else the
        decision's estimate (what the ledger settles, and what a report counts as spent).

        Args:
            logged: the decision.
            outcome: what its ``record`` reported (``prompt_tokens``, ``completion_tokens``, ``cost_usd``).

        Returns:
            The USD amount.
        """
        reported = outcome.get("cost_usd")
        if reported is not None:
            return float(reported)
        price = self._prices.get(logged.deployment)
        if price is not None:
            return price.cost(outcome["prompt_tokens"], outcome["completion_tokens"])
        # The deployment was renamed or has no price: its estimate at decision time is the best figure there is.
        return float(logged.estimates.get(logged.deployment, {}).get("usd", 0.0))

    def _learn(self, logged: LoggedDecision) -> None:
        decision_id = logged.id
        if self.config.history_batch_s > 0:
            # Written with the others of the next batch: one Chroma call for many outcomes (see history_batch_s).
            self.decisions.mark_history_pending(decision_id)
            return
        try:
            self.history.upsert([self._history_record(logged)])
        except STORE_UNREACHABLE as exc:  # the spend is settled; a history outage must not turn that into an error
            self.decisions.mark_history_pending(decision_id)
            _log.warning("history write failed for decision %s (queued in the decision log, written when the store "
                         "is back): %s", decision_id, exc)
        except Exception as exc:
            _log.warning("history write failed for decision %s (its outcome is not learned): %s", decision_id, exc)

    def feedback(self, decision_id: str, quality: float) -> None:
        """Attach a quality score to a decision's outcome, in the log and in history (see :meth:`Router.feedback`).

        Args:
            decision_id: the decision, this router's or another's on the namespace.
            quality: score in [0, 1].

        Raises:
            UnknownDecisionError: no such decision, here or (Redis ledger) on another router of the namespace.
            ValueError: quality outside [0, 1] (or not a number), or the decision's call failed without an answer.
            LedgerUnavailableError: the decision is not this router's and the shared learning state cannot be read.
        """
        quality = score("quality", quality)
        logged = self.decisions.get(decision_id)
        if logged is None:
            self._feedback_for_elsewhere(decision_id, quality)
            return
        if logged.status == "failed":
            raise ValueError(f"decision_id: decision {decision_id!r} failed; there is no answer to score")
        self.decisions.merge_outcome(decision_id, {"quality": quality})
        if not (self.config.learn_online and logged.embedding.size):
            return
        if logged.status == "open":
            # Open: record() learns the score. Unless it closed the decision after the read above: then learn it here.
            closed = self.decisions.get(decision_id)
            if closed is None or closed.status != "recorded":
                return
        self._learn_quality(decision_id, logged.profile, quality)

    def knows(self, decision_id: str) -> bool:
        """Whether :meth:`feedback` can score this decision: this router's, or another router's on the namespace.

        Args:
            decision_id: the decision.

        Returns:
            Whether the decision is in this router's log or in the shared learning state.

        Raises:
            LedgerUnavailableError: the decision is not this router's and the shared learning state cannot be read.
        """
        return self.decisions.get(decision_id) is not None or self.learning.profile_of(decision_id) is not None

    def _feedback_for_elsewhere(self, decision_id: str, quality: float) -> None:
        """Score a decision another router made: for its record (shared), and in the shared history if it is there."""
        profile = self.learning.profile_of(decision_id)
        if profile is None:
            raise UnknownDecisionError(f"decision_id: unknown decision {decision_id!r}")
        self.learning.leave_feedback(decision_id, quality)
        if not self.config.learn_online:
            return
        try:
            self.history.update_outcome(decision_id, profile, ModelOutcome(quality=quality))
        except _NOT_WRITABLE as exc:  # its router learns the shared score when it writes the record
            _log.info("decision %s of another router is not in history yet (%s); its router learns the score",
                      decision_id, exc or "not recorded")

    def _feedback_from_elsewhere(self, decision_id: str) -> float | None:
        """A score another router on the namespace took for this router's decision (``None``: none, or unreadable)."""
        try:
            return self.learning.feedback_for(decision_id)
        except LedgerUnavailableError as exc:
            self._warn_learning(exc)
            return None

    def _learn_quality(self, decision_id: str, profile: str, quality: float) -> None:
        try:
            self.history.update_outcome(decision_id, profile, ModelOutcome(quality=quality))
        except KeyError:
            # Not in history yet: a record still writing it (it reads the log's score after), or a write queued by an
            # outage, which may have read the log before this score. Queued (again): the retry writes the log's score.
            self.decisions.mark_history_pending(decision_id)
            _log.info("no history record for decision %s yet; its quality score is queued in the decision log",
                      decision_id)
        except STORE_UNREACHABLE as exc:  # the score is in the decision log; an outage must not fail the caller
            self.decisions.mark_history_pending(decision_id)
            _log.warning("history write failed for the quality of decision %s (queued in the decision log, written "
                         "when the store is back): %s", decision_id, exc)

    def _retry_history_writes(self) -> None:
        """Write the oldest queued outcomes (a batch, or what a history outage held back), rebuilt from the decision
        log with its latest score.

        At most every :data:`HISTORY_RETRY_S` seconds (``history_batch_s`` if sooner) and :data:`HISTORY_RETRY_BATCH`
        decisions, by one caller at a time (the others go on). The write is an upsert by decision id, so a retry of a
        write that had succeeded changes nothing; one that fails leaves the queue as it was.
        """
        now = time.monotonic()
        if now < self._history_retry_at or not self._history_retry_lock.acquire(blocking=False):
            return
        try:
            self._history_retry_at = now + min(HISTORY_RETRY_S, self.config.history_batch_s or HISTORY_RETRY_S)
            # Processes sharing the decision log (workers of one host) take turns: two writing the same outcomes
            # would double the store's work, and the second write replaces records instead of adding them.
            if not self.decisions.acquire(_FLUSH_LEASE, self._owner, HISTORY_FLUSH_LEASE_S):
                return
            try:
                self._write_queued()
            finally:
                self.decisions.release(_FLUSH_LEASE, self._owner)
        finally:
            self._history_retry_lock.release()

    def _write_queued(self) -> None:
        """One batch of queued outcomes to history (see :meth:`_retry_history_writes`)."""
        queued = [(logged, mark) for decision_id, mark in self.decisions.history_pending(HISTORY_RETRY_BATCH)
                  if (logged := self.decisions.get(decision_id)) is not None]
        if not queued:
            return
        try:
            self.history.upsert([self._history_record(logged) for logged, _ in queued])
        except STORE_UNREACHABLE as exc:  # still down: kept queued, tried again later
            _log.info("%d queued history write(s) wait for the store: %s", len(queued), exc)
            return
        except Exception:  # refused: one outcome the store cannot take must not hold back the others
            queued = self._write_one_by_one(queued)
        for logged, mark in queued:
            latest = self.decisions.get(logged.id)
            if latest is not None and latest.outcome.get("quality") != logged.outcome.get("quality"):
                continue  # a score came in after the read (its own write may have landed first): written next
            self.decisions.clear_history_pending(logged.id, mark)
        # A batch is routine; outcomes an outage held back are worth a line.
        _log.log(logging.DEBUG if self.config.history_batch_s else logging.INFO,
                 "wrote %d queued outcome(s) to history", len(queued))

    def _write_one_by_one(self, queued: list[tuple[LoggedDecision, int]]) -> list[tuple[LoggedDecision, int]]:
        """Write a refused batch's outcomes one at a time, giving up those the store refuses alone (they stay in the
        decision log; a warning names them).

        Returns:
            The outcomes written; if the store goes away meanwhile, those not tried yet stay queued.
        """
        written: list[tuple[LoggedDecision, int]] = []
        for logged, mark in queued:
            try:
                self.history.upsert([self._history_record(logged)])
            except STORE_UNREACHABLE:
                return written  # the store went away: the rest stays queued
            except Exception as exc:
                _log.warning("history refused the outcome of decision %s, which is not learned (it stays in the "
                             "decision log): %s", logged.id, exc)
                self.decisions.clear_history_pending(logged.id, mark)
                continue
            written.append((logged, mark))
        return written

    def _history_record(self, logged: LoggedDecision) -> HistoryRecord:
        """The history record of a recorded decision, from what the decision log holds now."""
        outcome = logged.outcome
        quality = outcome.get("quality")
        if quality is None:  # a score another host took while this write was queued
            quality = self._feedback_from_elsewhere(logged.id)
        return HistoryRecord(id=logged.id, embedding=logged.embedding.tolist(), text=logged.text, outcomes={
            logged.profile: ModelOutcome(quality=quality, prompt_tokens=outcome["prompt_tokens"],
                                         completion_tokens=outcome["completion_tokens"],
                                         cost_usd=self.usd_of(logged, outcome)),
        })
