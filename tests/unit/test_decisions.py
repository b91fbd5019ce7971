import sqlite3
from pathlib import Path

import numpy as np

from llm_router_plugin.decisions import DecisionLog

ESTIMATES = {"d": {"quality": 0.5, "tokens": 10.0, "usd": 0.001}}


def add(log: DecisionLog, decision_id: str, created_at: float = 0.0) -> None:
    log.add(decision_id, "d", "p", "learned", np.zeros(4), None, ESTIMATES, created_at=created_at)


def test_count_sees_every_writer_of_the_file_and_survives_a_restart(tmp_path: Path) -> None:
    first, second = DecisionLog(tmp_path / "l.db"), DecisionLog(tmp_path / "l.db")  # e.g. two proxy workers
    add(first, "a")
    add(second, "b")
    add(first, "c")
    assert first.count() == second.count() == 3
    first.close()
    second.close()
    assert DecisionLog(tmp_path / "l.db").count() == 3


def test_a_log_written_before_the_counter_is_counted_when_opened(tmp_path: Path) -> None:
    DecisionLog(tmp_path / "l.db").close()
    db = sqlite3.connect(tmp_path / "l.db")
    with db:  # what an earlier version left: decisions, and no counter
        db.execute("INSERT INTO decisions (id, created_at, deployment, profile, phase, embedding, estimates) "
                   "VALUES ('old', 0, 'd', 'p', 'learned', x'00', '{}')")
        db.execute("DROP TABLE decision_count")
    db.close()
    log = DecisionLog(tmp_path / "l.db")
    assert log.count() == 1
    add(log, "new", created_at=1.0)
    assert log.count() == 2
    assert log.recent_estimates(1) == [ESTIMATES]  # the latest only


def test_closing_keeps_a_score_given_while_the_decision_was_open(tmp_path: Path) -> None:
    # Feedback may land between record's read of the decision and its close (another thread or proxy worker).
    log = DecisionLog(tmp_path / "l.db")
    add(log, "a")
    add(log, "b")
    for decision_id in ("a", "b"):
        log.merge_outcome(decision_id, {"quality": 0.25})
    assert log.close_decision("a", "recorded", {"prompt_tokens": 3, "quality": None})
    assert log.close_decision("b", "recorded", {"prompt_tokens": 3, "quality": 0.75})  # a score given to record wins
    a, b = log.get("a"), log.get("b")
    assert a is not None and a.outcome == {"prompt_tokens": 3, "quality": 0.25}
    assert b is not None and b.outcome == {"prompt_tokens": 3, "quality": 0.75}


def test_merging_keeps_what_was_recorded(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "l.db")
    add(log, "a")
    log.merge_outcome("a", {"quality": 0.5})  # no outcome yet
    assert log.close_decision("a", "recorded", {"prompt_tokens": 3, "quality": None})
    log.merge_outcome("a", {"quality": 1.0})
    logged = log.get("a")
    assert logged is not None and logged.outcome == {"prompt_tokens": 3, "quality": 1.0}


def test_a_log_from_before_the_history_queue_gains_it_when_opened(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "l.db")
    with db:  # what an earlier version left: no history_pending column
        db.execute("CREATE TABLE decisions (id TEXT PRIMARY KEY, created_at REAL NOT NULL, deployment TEXT NOT NULL, "
                   "profile TEXT NOT NULL, phase TEXT NOT NULL, embedding BLOB NOT NULL, text TEXT, "
                   "estimates TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open', outcome TEXT)")
        db.execute("INSERT INTO decisions (id, created_at, deployment, profile, phase, embedding, estimates) "
                   "VALUES ('old', 0, 'd', 'p', 'learned', x'00', '{}')")
    db.close()
    first, second = DecisionLog(tmp_path / "l.db"), DecisionLog(tmp_path / "l.db")  # both open the migrated file
    assert first.history_pending_count() == 0  # nothing an earlier version wrote is queued
    first.mark_history_pending("old")
    assert second.history_pending(10) == [("old", 1)]


def test_queued_history_writes_come_oldest_first_and_a_requeue_outlives_a_stale_clear(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "l.db")
    add(log, "a", created_at=1.0)
    add(log, "b", created_at=2.0)
    add(log, "c", created_at=3.0)
    log.mark_history_pending("c")
    log.mark_history_pending("a")
    assert log.history_pending(10) == [("a", 1), ("c", 1)]
    assert log.history_pending(1) == [("a", 1)]
    log.mark_history_pending("a")  # queued again (a feedback score) while the write read at mark 1 was under way
    assert not log.clear_history_pending("a", 1)
    assert log.history_pending_count() == 2
    assert log.clear_history_pending("a", 2)
    assert log.history_pending(10) == [("c", 1)]


def test_entries_are_every_decision_since_a_time_oldest_first_with_status_and_outcome(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "l.db")
    for decision_id, created_at in (("late", 30.0), ("early", 10.0), ("middle", 20.0)):
        add(log, decision_id, created_at=created_at)
    log.close_decision("middle", "recorded", {"prompt_tokens": 3, "completion_tokens": 4})
    log.close_decision("late", "failed", {"error": "timeout"})
    assert [e.id for e in log.entries()] == ["early", "middle", "late"]
    since = log.entries(since=20.0)
    assert [(e.id, e.status, e.outcome) for e in since] == [
        ("middle", "recorded", {"prompt_tokens": 3, "completion_tokens": 4}), ("late", "failed", {"error": "timeout"})]
    assert all(e.estimates == ESTIMATES and e.phase == "learned" and e.deployment == "d" for e in since)
