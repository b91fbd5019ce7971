import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from llm_router_plugin import LedgerCorruptError
from llm_router_plugin.budget import BudgetLedger, Reservation, SQLiteLedger, window_index
from llm_router_plugin.decisions import DecisionLog
from llm_router_plugin.redis_ledger import RedisLedger

Ledger = SQLiteLedger | RedisLedger
LedgerFactory = Callable[[], Ledger]


@pytest.fixture(params=["sqlite", "redis"])
def ledger_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerFactory]:
    """Opens ledgers on one store: the same SQLite file, or the same Redis server and a namespace of this test's own."""
    opened: list[SQLiteLedger | RedisLedger] = []
    namespace = f"test-{uuid.uuid4().hex}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def open_ledger() -> Ledger:
        ledger: Ledger = (
            SQLiteLedger(tmp_path / "l.db") if request.param == "sqlite" else RedisLedger(url, namespace=namespace)
        )
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()
    if url:
        with closing(redis.Redis.from_url(url)) as client:
            for key in client.scan_iter(match=f"{{{namespace}}}:*"):
                client.delete(key)


@pytest.fixture
def ledger(ledger_factory: LedgerFactory) -> BudgetLedger:
    return ledger_factory()


def hold(ledger: BudgetLedger, decision_id: str, tokens: float, limit: float = 100.0, window: int = 0,
         expires_at: float = 1e12, now: float = 0.0) -> bool:
    return ledger.try_reserve(
        Reservation(decision_id, "d", window, {"tokens": tokens, "usd": 0.0}, {"tokens": limit}, expires_at), now
    )


def test_reserve_refuses_what_the_limit_cannot_cover(ledger: BudgetLedger) -> None:
    assert hold(ledger, "a", 60)
    assert not hold(ledger, "b", 50)  # 60 held + 50 > 100
    assert hold(ledger, "c", 40)
    assert ledger.usage("d", 0, 0.0) == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 100.0, "usd": 0.0})


def test_settle_replaces_the_hold_by_actual_usage_once(ledger: BudgetLedger) -> None:
    hold(ledger, "a", 60)
    settlement = ledger.settle("a", {"tokens": 25.0}, 0.0)
    assert settlement is not None and settlement.reserved["tokens"] == 60 and settlement.actual == {"tokens": 25.0}
    assert ledger.settle("a", {"tokens": 25.0}, 0.0) is None  # settling twice charges once
    spent, held = ledger.usage("d", 0, 0.0)
    assert spent["tokens"] == 25 and held["tokens"] == 0
    assert hold(ledger, "b", 75)


def test_release_and_expiry(ledger: BudgetLedger) -> None:
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


def test_a_failure_recorded_after_expiry_refunds_the_charge(ledger: BudgetLedger) -> None:
    hold(ledger, "a", 90, expires_at=10.0)
    assert ledger.usage("d", 0, 11.0)[0]["tokens"] == 90
    assert ledger.release("a")
    assert ledger.usage("d", 0, 12.0)[0]["tokens"] == 0
    # A success reported after the failure: the call was answered after all, and is charged once.
    assert ledger.settle("a", {"tokens": 5.0}, 13.0) is not None
    assert ledger.settle("a", {"tokens": 5.0}, 13.0) is None
    assert ledger.usage("d", 0, 14.0)[0]["tokens"] == 5


def test_usages_read_many_deployments_and_windows_at_once(ledger: BudgetLedger) -> None:
    assert hold(ledger, "a", 60, expires_at=10.0)
    assert hold(ledger, "b", 30, window=1)
    ledger.settle("b", {"tokens": 20.0, "usd": 0.5}, 0.0)
    pairs = [("d", 1), ("unknown", 0), ("d", 0)]
    # In the order asked; the expired hold of window 0 is charged by the same read.
    assert ledger.usages(pairs, 11.0) == [
        ({"tokens": 20.0, "usd": 0.5}, {"tokens": 0.0, "usd": 0.0}),
        ({"tokens": 0.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0}),
        ({"tokens": 60.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0}),
    ]
    assert ledger.usages(pairs, 11.0) == [ledger.usage(name, window, 11.0) for name, window in pairs]
    assert ledger.usages([], 11.0) == []


def test_windows_are_separate(ledger: BudgetLedger) -> None:
    assert hold(ledger, "a", 100, window=0)
    assert not hold(ledger, "b", 1, window=0)
    assert hold(ledger, "c", 100, window=1)
    assert window_index(0.0, 3600.0, 7300.0) == 2
    assert window_index(0.0, None, 7300.0) == 0


def test_persists_across_reopen(ledger_factory: LedgerFactory) -> None:
    # SQLite: the same file reopened; Redis: a new client on the same server and namespace.
    ledger = ledger_factory()
    hold(ledger, "a", 10)
    ledger.settle("a", {"tokens": 10.0}, 0.0)
    ledger.set_state("duals", {"lambdas": {"d": {"tokens": 0.5}}})
    anchor = ledger.anchor
    ledger.close()
    again = ledger_factory()
    assert again.anchor == anchor
    assert again.usage("d", 0, 0.0)[0]["tokens"] == 10
    assert again.get_state("duals") == {"lambdas": {"d": {"tokens": 0.5}}}


def test_concurrent_holds_never_exceed_the_limit(ledger_factory: LedgerFactory) -> None:
    ledgers = [ledger_factory() for _ in range(2)]  # two connections (clients), as two processes would have
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


def test_invalid_amounts(ledger: BudgetLedger) -> None:
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


def test_a_decision_log_alone_becomes_a_ledger(tmp_path: Path) -> None:
    # What a router whose budgets lived on Redis leaves in data_dir: switched back to SQLite, it starts empty.
    path = tmp_path / "ledger.sqlite3"
    DecisionLog(path)
    ledger = SQLiteLedger(path)
    assert ledger.usage("d", 0, 0.0)[0] == {"tokens": 0.0, "usd": 0.0}


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


def test_a_hold_may_require_more_headroom_than_it_reserves(ledger: BudgetLedger) -> None:

    def hold_needing(decision_id: str, tokens: float, required: float) -> bool:
        return ledger.try_reserve(Reservation(decision_id, "d", 0, {"tokens": tokens, "usd": 0.0}, {"tokens": 100.0},
                                              1e12, {"tokens": required}), 0.0)

    assert hold_needing("a", 40, 80)
    assert ledger.usage("d", 0, 0.0)[1]["tokens"] == 40  # only the hold is reserved
    assert not hold_needing("b", 40, 80)  # 40 held + 80 needed > 100
    assert hold_needing("c", 40, 60)
    with pytest.raises(ValueError, match="required"):
        hold_needing("d", 1, -1)


# ------------------------------------------------------------------------------------------ Redis only

def test_redis_holds_from_many_clients_never_exceed_the_limit(redis_url: str) -> None:
    # Each thread its own client and connection pool, as separate router processes would have.
    namespace = f"test-{uuid.uuid4().hex}"
    granted: list[bool] = []
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        ledger = RedisLedger(redis_url, namespace=namespace)
        start.wait()
        try:
            for i in range(30):
                granted.append(hold(ledger, f"{n}-{i}", 0.7, limit=50))
        finally:
            ledger.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 71  # floor(50 / 0.7), whatever the interleaving
    spent, held = RedisLedger(redis_url, namespace=namespace).usage("d", 0, 0.0)
    assert held["tokens"] == pytest.approx(71 * 0.7) and held["tokens"] <= 50 and spent["tokens"] == 0


def test_redis_ledgers_share_the_anchor_and_namespaces_are_separate(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    first = RedisLedger(redis_url, namespace=namespace)
    assert RedisLedger(redis_url, namespace=namespace).anchor == first.anchor  # set once (SET NX)
    other = RedisLedger(redis.Redis.from_url(redis_url), namespace=f"{namespace}-other")  # a bytes client works too
    assert hold(first, "a", 100)
    assert hold(other, "a", 100)  # the same decision id and deployment in another namespace: its own budget
    assert other.settle("a", {"tokens": 1.0}, 0.0) is not None
    assert first.usage("d", 0, 0.0) == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 100.0, "usd": 0.0})
    with pytest.raises(ValueError, match="namespace"):
        RedisLedger(redis_url, namespace="a}b")


def test_redis_amounts_are_exact_doubles_and_a_decision_holds_once(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace=f"test-{uuid.uuid4().hex}")
    for i, amount in enumerate([0.1, 0.2, 1e-9, 123456.789]):
        assert hold(ledger, f"h{i}", amount, limit=1e6)
        ledger.settle(f"h{i}", {"tokens": amount, "usd": amount / 3}, 0.0)
    spent, held = ledger.usage("d", 0, 0.0)
    assert spent["tokens"] == ((0.1 + 0.2) + 1e-9) + 123456.789  # Lua doubles, kept as 17 digits: SQLite's sums
    assert held == {"tokens": 0.0, "usd": 0.0}
    assert hold(ledger, "dup", 1, limit=1e6)
    with pytest.raises(ValueError, match="already has a hold"):
        hold(ledger, "dup", 1, limit=1e6)
    with pytest.raises(ValueError, match="actual"):
        ledger.settle("dup", {"tokens": float("nan")}, 0.0)
    assert ledger.settle("unknown", {"tokens": 1.0}, 0.0) is None and not ledger.release("unknown")


def test_redis_timed_windows_expire_and_total_windows_do_not(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    ledger = RedisLedger(redis_url, namespace=namespace, window_seconds={"d": 60.0, "t": None}, ttl_margin_s=30)
    assert hold(ledger, "a", 10)
    assert ledger.try_reserve(Reservation("b", "t", 0, {"tokens": 5.0}, {}, 1e12), 0.0)
    ledger.set_state("k", [1])
    client = ledger.client
    timed = [k for k in client.scan_iter(match=f"{{{namespace}}}:*") if ":w:d:" in k or k.endswith(":decision:a")]
    total = [k for k in client.scan_iter(match=f"{{{namespace}}}:*") if k not in timed]
    assert len(timed) == 4 and all(60_000 < client.pttl(k) <= 90_000 for k in timed)  # holds, live, held, decision
    assert total and all(client.pttl(k) == -1 for k in total)  # anchor, state, total window's keys
    with pytest.raises(ValueError, match="window_seconds"):
        RedisLedger(redis_url, namespace=namespace, window_seconds={"d": 0})


def test_redis_expires_thousands_of_holds_in_one_script(redis_url: str) -> None:
    # Lua's unpack() stops near 8000 values: the expiry removes them in chunks. Live holds are summed as they come
    # and go, so 9000 holds cost 9000 steps, not 9000 x 9000 / 2.
    ledger = RedisLedger(redis_url, namespace=f"test-{uuid.uuid4().hex}")
    granted = [hold(ledger, f"h{i}", 1, limit=1e6, expires_at=10.0) for i in range(9000)]
    assert all(granted)
    assert ledger.usage("d", 0, 5.0)[1]["tokens"] == 9000
    assert ledger.usage("d", 0, 11.0) == ({"tokens": 9000.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})
    ledger.client.delete(*ledger.client.scan_iter(match=f"{{{ledger.namespace}}}:*"))
