import re
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from llm_router_plugin import LedgerCorruptError
from llm_router_plugin.budget import Reservation, SQLiteLedger, window_index


def hold(ledger: SQLiteLedger, decision_id: str, tokens: float, limit: float = 100.0, window: int = 0,
         expires_at: float = 1e12, now: float = 0.0) -> bool:
    return ledger.try_reserve(
        Reservation(decision_id, "d", window, {"tokens": tokens, "usd": 0.0}, {"tokens": limit}, expires_at), now
    )


def test_reserve_refuses_what_the_limit_cannot_cover(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    assert hold(ledger, "a", 60)
    assert not hold(ledger, "b", 50)  # 60 held + 50 > 100
    assert hold(ledger, "c", 40)
    assert ledger.usage("d", 0, 0.0) == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 100.0, "usd": 0.0})


def test_settle_replaces_the_hold_by_actual_usage_once(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    hold(ledger, "a", 60)
    settlement = ledger.settle("a", {"tokens": 25.0}, 0.0)
    assert settlement is not None and settlement.reserved["tokens"] == 60 and settlement.actual == {"tokens": 25.0}
    assert ledger.settle("a", {"tokens": 25.0}, 0.0) is None  # settling twice charges once
    spent, held = ledger.usage("d", 0, 0.0)
    assert spent["tokens"] == 25 and held["tokens"] == 0
    assert hold(ledger, "b", 75)


def test_release_and_expiry(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    hold(ledger, "a", 90, expires_at=10.0)
    assert not hold(ledger, "b", 20, now=5.0)
    # The unrecorded hold timed out: the call may have happened, so it is charged at its reserved amount.
    assert not hold(ledger, "b", 20, now=11.0)
    assert ledger.usage("d", 0, 11.0) == ({"tokens": 90.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})
    late = ledger.settle("a", {"tokens": 30.0}, 12.0)  # a late record replaces that charge by the actual usage
    assert late is not None and late.was_expired
    assert ledger.usage("d", 0, 12.0)[0]["tokens"] == 30
    assert hold(ledger, "b", 20, now=12.0)
    assert ledger.release("b") and not ledger.release("b")
    assert ledger.usage("d", 0, 12.0)[0]["tokens"] == 30


def test_a_failure_recorded_after_expiry_refunds_the_charge(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    hold(ledger, "a", 90, expires_at=10.0)
    assert ledger.usage("d", 0, 11.0)[0]["tokens"] == 90
    assert ledger.release("a")
    assert ledger.usage("d", 0, 12.0)[0]["tokens"] == 0
    # A success reported after the failure: the call was answered after all, and is charged once.
    assert ledger.settle("a", {"tokens": 5.0}, 13.0) is not None
    assert ledger.settle("a", {"tokens": 5.0}, 13.0) is None
    assert ledger.usage("d", 0, 14.0)[0]["tokens"] == 5


def test_windows_are_separate(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    assert hold(ledger, "a", 100, window=0)
    assert not hold(ledger, "b", 1, window=0)
    assert hold(ledger, "c", 100, window=1)
    assert window_index(0.0, 3600.0, 7300.0) == 2
    assert window_index(0.0, None, 7300.0) == 0


def test_persists_across_reopen(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    hold(ledger, "a", 10)
    ledger.settle("a", {"tokens": 10.0}, 0.0)
    ledger.set_state("duals", {"lambdas": {"d": {"tokens": 0.5}}})
    anchor = ledger.anchor
    ledger.close()
    again = SQLiteLedger(tmp_path / "l.db")
    assert again.anchor == anchor
    assert again.usage("d", 0, 0.0)[0]["tokens"] == 10
    assert again.get_state("duals") == {"lambdas": {"d": {"tokens": 0.5}}}


def test_concurrent_holds_never_exceed_the_limit(tmp_path: Path) -> None:
    ledgers = [SQLiteLedger(tmp_path / "l.db") for _ in range(2)]  # two connections, as two processes would have
    granted: list[bool] = []

    def worker(n: int) -> None:
        for i in range(25):
            granted.append(hold(ledgers[n % 2], f"{n}-{i}", 3, limit=100))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 33  # floor(100 / 3), whatever the interleaving


def test_invalid_amounts(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    with pytest.raises(ValueError, match="amounts"):
        hold(ledger, "a", -1)


@pytest.mark.parametrize("content", [b"", b"SQLite format 2\0 but not really\n" * 8], ids=["empty", "not sqlite"])
def test_a_damaged_ledger_file_stops_the_ledger_and_is_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(content)
    with pytest.raises(LedgerCorruptError, match=f"^{re.escape(str(path))}: not a budget ledger "):
        SQLiteLedger(path)
    assert path.read_bytes() == content  # kept for whoever recovers the spend


def test_a_database_of_something_else_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(LedgerCorruptError, match="no 'meta' table"):
        SQLiteLedger(path)


def test_an_empty_database_becomes_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # writes the header: a database with no tables
    ledger = SQLiteLedger(path)
    assert hold(ledger, "a", 10)


def test_processes_starting_together_share_one_new_ledger(tmp_path: Path) -> None:
    # Each opener must see no file or a whole ledger, never the empty file SQLite starts a database with.
    path = tmp_path / "ledger.sqlite3"
    start = threading.Barrier(8)
    opened: list[SQLiteLedger] = []
    failed: list[BaseException] = []

    def open_ledger() -> None:
        start.wait()
        try:
            opened.append(SQLiteLedger(path))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=open_ledger) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed
    assert len({ledger.anchor for ledger in opened}) == 1
    assert {p.name for p in tmp_path.iterdir()} <= {path.name, f"{path.name}-wal", f"{path.name}-shm"}  # no drafts


def test_a_hold_may_require_more_headroom_than_it_reserves(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")

    def hold_needing(decision_id: str, tokens: float, required: float) -> bool:
        return ledger.try_reserve(Reservation(decision_id, "d", 0, {"tokens": tokens, "usd": 0.0}, {"tokens": 100.0},
                                              1e12, {"tokens": required}), 0.0)

    assert hold_needing("a", 40, 80)
    assert ledger.usage("d", 0, 0.0)[1]["tokens"] == 40  # only the hold is reserved
    assert not hold_needing("b", 40, 80)  # 40 held + 80 needed > 100
    assert hold_needing("c", 40, 60)
    with pytest.raises(ValueError, match="required"):
        hold_needing("d", 1, -1)
