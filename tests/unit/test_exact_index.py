"""Exact neighbour search: the answer HNSW gives up on when history holds many identical vectors."""

import threading
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import HistoryRecord, ModelOutcome
from llm_router_plugin.exact_index import ExactIndex
from llm_router_plugin.history import ChromaHistory


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def crowded_history(n_duplicates: int = 3000, n_distinct: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Thousands of identical vectors (a shared few-shot prefix) and a few distinct ones near a query direction."""
    rng = np.random.default_rng(seed)
    crowd = np.tile(unit(rng.normal(size=(1, 32))), (n_duplicates, 1))
    query = unit(rng.normal(size=(1, 32)))
    distinct = unit(query + 0.3 * rng.normal(size=(n_distinct, 32)))
    return np.concatenate([crowd, distinct]), query


def store(tmp_path: Path, vectors: np.ndarray, exact_search_max: int) -> ChromaHistory:
    history = ChromaHistory(tmp_path / f"chroma-{exact_search_max}", exact_search_max=exact_search_max)
    history.upsert([HistoryRecord(id=f"r{i:05d}", embedding=v, outcomes={"m": ModelOutcome(completion_tokens=i)})
                    for i, v in enumerate(vectors)])
    return history


def test_exact_search_finds_the_true_neighbours_among_thousands_of_duplicates(tmp_path: Path) -> None:
    vectors, query = crowded_history()
    truth = set(np.argsort(-(vectors @ query[0]), kind="stable")[:5])
    found = store(tmp_path, vectors, exact_search_max=20_000).neighbours(query, 5, ["m"])
    assert {int(i[1:]) for i in found.ids[0]} == truth
    assert np.all(found.similarity[0] > 0.5)
    assert found.outcomes[0, :, 0, 2].tolist() == [float(i[1:]) for i in found.ids[0]]  # outcomes travel with ids


def test_exact_search_is_deterministic_with_ties_in_insertion_order() -> None:
    vectors = unit(np.ones((6, 4)))
    index = ExactIndex([f"id{i}" for i in range(6)], vectors)
    ids, sims = index.search(vectors[:1], 3)
    assert ids == [["id0", "id1", "id2"]]
    assert np.allclose(sims, 1.0)


def test_writes_through_the_store_reach_the_exact_index(tmp_path: Path) -> None:
    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    history = store(tmp_path, vectors, exact_search_max=100)
    history.neighbours(query, 3, ["m"])  # loads the index
    history.upsert([HistoryRecord(id="new", embedding=query[0], outcomes={"m": ModelOutcome(quality=1.0)})])
    found = history.neighbours(query, 3, ["m"])
    assert found.ids[0][0] == "new" and found.outcomes[0, 0, 0, 0] == 1.0
    history.update_outcome("new", "m", ModelOutcome(quality=0.0))
    assert history.neighbours(query, 1, ["m"]).outcomes[0, 0, 0, 0] == 0.0


def test_above_the_limit_the_store_uses_hnsw(tmp_path: Path) -> None:
    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    history = store(tmp_path, vectors, exact_search_max=5)
    assert len(history.neighbours(query, 3, ["m"]).ids[0]) == 3  # answered by Chroma's index


def test_records_written_by_another_store_object_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llm_router_plugin.history as history_module

    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    reader = store(tmp_path, vectors, exact_search_max=100)
    reader.neighbours(query, 3, ["m"])  # loads the index
    writer = ChromaHistory(tmp_path / "chroma-100", exact_search_max=100)  # another worker on the same store
    writer.upsert([HistoryRecord(id="theirs", embedding=query[0], outcomes={"m": ModelOutcome(quality=1.0)})])
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    assert reader.neighbours(query, 1, ["m"]).ids[0] == ["theirs"]


def test_an_index_grows_one_record_at_a_time() -> None:
    index = ExactIndex([], np.zeros((0, 0), np.float32))
    vectors = unit(np.random.default_rng(1).normal(size=(300, 8)))
    for i, v in enumerate(vectors):
        index.upsert([f"r{i}"], v[None])
    ids, sims = index.search(vectors[123:124], 1)
    assert ids == [["r123"]] and len(index) == 300 and np.isclose(sims[0, 0], 1.0)


def test_another_process_s_writes_are_caught_up_without_reloading_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proxy workers and hosts learn from every call: each reloading the whole history whenever another one wrote a
    # record would cost every process a full scan every few seconds.
    import llm_router_plugin.history as history_module

    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    reader = store(tmp_path, vectors, exact_search_max=100)
    reader.neighbours(query, 3, ["m"])  # loads the index
    assert np.isnan(reader.profile_means(["other"])[0, 0])  # nothing known of "other" yet
    writer = ChromaHistory(tmp_path / "chroma-100", exact_search_max=100)  # another worker on the same store
    writer.upsert([HistoryRecord(id="theirs", embedding=query[0], outcomes={"other": ModelOutcome(quality=0.2)})])
    writer.update_outcome("r00003", "other", ModelOutcome(quality=0.6))  # a merge (feedback) of theirs
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)

    def no_full_reload(*args: object) -> None:
        raise AssertionError("the whole history was loaded again")

    monkeypatch.setattr(reader, "_load_exact", no_full_reload)
    monkeypatch.setattr(reader, "_rebuild", no_full_reload)
    found = reader.neighbours(query, 1, ["other"])
    assert found.ids[0] == ["theirs"] and found.outcomes[0, 0, 0, 0] == pytest.approx(0.2)
    # The statistics moved with the records: "other" is known by two records now, with mean quality 0.4.
    assert reader.profile_means(["other"])[0, 0] == pytest.approx(0.4)
    # A record written without the reader's knowledge that it cannot place (an older writer: no write time) makes
    # the sizes differ after the catch-up: then the whole index is loaded again, as before.
    monkeypatch.undo()
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    writer._store().add(ids=["unstamped"], embeddings=query, metadatas=[{"q|other": 1.0}])
    assert reader.neighbours(query, 2, ["other"]).ids[0][0] in {"theirs", "unstamped"}
    assert len(reader._exact or []) == len(vectors) + 2


def test_concurrent_first_queries_load_the_history_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy worker's first requests arrive together: each loading the whole history for itself multiplied the
    # cold start by the number of requests in flight (22 s instead of 3 with 32 in flight).
    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    store(tmp_path, vectors, exact_search_max=100)
    fresh = ChromaHistory(tmp_path / "chroma-100", exact_search_max=100)  # a new process on the same store
    loads: list[str] = []
    for name in ("_load_exact", "_rebuild", "_relabel"):
        original = getattr(fresh, name)

        def counted(*args: object, _original: object = original, _name: str = name) -> object:
            loads.append(_name)
            threading.Event().wait(0.05)  # a load takes a while: the others arrive meanwhile
            return _original(*args)  # type: ignore[operator]

        monkeypatch.setattr(fresh, name, counted)
    centres = unit(np.random.default_rng(2).normal(size=(4, 32)))
    barrier = threading.Barrier(8)

    def first_query() -> None:
        barrier.wait()
        fresh.neighbours(query, 3, ["m"])
        fresh.profile_means(["m"])
        fresh.cluster_stats(centres, ["m"])

    threads = [threading.Thread(target=first_query) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each once; the statistics are the outcome table's, kept on disk by the first store object (no rebuild).
    assert sorted(loads) == ["_load_exact", "_relabel"]


def test_a_replaced_record_moves_the_statistics_without_a_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    history = store(tmp_path, vectors, exact_search_max=100)
    history.neighbours(query, 3, ["m"])  # loads the index
    assert history.profile_means(["m"])[0, 2] == pytest.approx(np.mean(range(15)))

    def no_rescan(*args: object) -> None:
        raise AssertionError("the whole history was scanned again")

    monkeypatch.setattr(history, "_rebuild", no_rescan)
    replaced = HistoryRecord(id="r00000", embedding=vectors[0], outcomes={"m": ModelOutcome(completion_tokens=150)})
    history.upsert([replaced])
    assert history.profile_means(["m"])[0, 2] == pytest.approx((sum(range(15)) + 150) / 15)


def test_a_record_written_between_index_load_and_stats_scan_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the catch-up adds a record to the statistics whenever the exact index lacks it, even when the
    # statistics were scanned after the record was written (so they hold it already).
    import llm_router_plugin.history as history_module

    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    reader = store(tmp_path, vectors, exact_search_max=100)
    reader.upsert([HistoryRecord(id="mine", embedding=vectors[0], outcomes={"other": ModelOutcome(quality=1.0)})])
    reader.neighbours(query, 3, ["m"])  # loads the index; the statistics are not loaded yet
    writer = ChromaHistory(tmp_path / "chroma-100", exact_search_max=100)  # another worker on the same store
    writer.upsert([HistoryRecord(id="theirs", embedding=query[0], outcomes={"other": ModelOutcome(quality=0.2)})])
    reader.profile_means(["other"])  # the statistics, computed after "theirs" was written
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    reader.neighbours(query, 1, ["other"])  # catches up on "theirs"
    assert reader.profile_means(["other"])[0, 0] == pytest.approx(0.6)  # (1.0 + 0.2) / 2, not (1.0 + 0.2 + 0.2) / 3
    assert reader.count() == len(vectors) + 2


def test_a_query_s_catch_up_during_a_write_of_this_store_counts_the_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a query thread's catch-up runs without the write lock, so it can read a record this store just
    # wrote (Chroma has it) before the writing thread moves the statistics: both add it.
    import llm_router_plugin.history as history_module

    vectors, query = crowded_history(n_duplicates=10, n_distinct=5)
    history = store(tmp_path, vectors, exact_search_max=100)
    history.neighbours(query, 3, ["m"])  # loads the index
    history.profile_means(["m"])  # and the statistics
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    collection = history._store()
    upsert = collection.upsert

    def upsert_then_a_query_arrives(*args: object, **kwargs: object) -> None:
        upsert(*args, **kwargs)
        history.neighbours(query, 1, ["m"])  # another thread's route, between the write and its statistics

    monkeypatch.setattr(collection, "upsert", upsert_then_a_query_arrives)
    history.upsert([HistoryRecord(id="new", embedding=query[0], outcomes={"m": ModelOutcome(quality=1.0)})])
    assert history.count() == len(vectors) + 1


def test_the_nearest_are_those_of_a_full_stable_sort_ties_included() -> None:
    # Only the records at or above the k-th similarity are sorted: ties at that boundary must still go in
    # insertion order, as a stable sort of every record would put them.
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, k = int(rng.integers(1, 80)), int(rng.integers(1, 90))
        vectors = unit(rng.integers(0, 3, size=(n, 3)).astype(float) + 0.01)  # few distinct directions: many ties
        query = unit(rng.normal(size=(1, 3)))
        ids, sims = ExactIndex([f"r{i}" for i in range(n)], vectors).search(query, k)
        expected = np.argsort(-(vectors @ query[0]), kind="stable")[:k]
        assert ids[0] == [f"r{i}" for i in expected]
        assert np.all(np.diff(sims[0]) <= 1e-6)
