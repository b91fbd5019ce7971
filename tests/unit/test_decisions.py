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
