"""The history's side store: neighbours' outcomes without Chroma metadata, and statistics that survive a restart."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_router_plugin import HistoryRecord, ModelOutcome
from llm_router_plugin.history import FIELDS, ChromaHistory, decode_outcomes
from llm_router_plugin.outcome_table import OutcomeTable

PROFILES = ["a", "b", "c"]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def records(n: int = 300, seed: int = 0) -> list[HistoryRecord]:
    """Records in a few clusters, each profile known on part of them, with every field kind."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(6, 16)))
    out = []
    for i in range(n):
        vector = unit(centres[i % 6] + 0.4 * rng.normal(size=(1, 16)))[0]
        outcomes = {p: ModelOutcome(quality=float(rng.random()), prompt_tokens=int(rng.integers(1, 500)),
                                    completion_tokens=int(rng.integers(1, 900)), cost_usd=float(rng.random() / 100))
                    for j, p in enumerate(PROFILES) if (i + j) % 4}
        out.append(HistoryRecord(id=f"r{i:04d}", embedding=vector, task=f"t{i % 3}", outcomes=outcomes))
    return out


def from_metadata(history: ChromaHistory, ids: list[str]) -> np.ndarray:
    """The outcomes of ``ids`` as Chroma's own metadata holds them (the source of truth)."""
    got = history._store().get(ids=ids, include=["metadatas"])
    by_id = dict(zip(got["ids"], got["metadatas"], strict=True))
    out = np.full((len(ids), len(PROFILES), len(FIELDS)), np.nan)
    for row, record_id in enumerate(ids):
        outcomes = decode_outcomes(by_id[record_id])
        for col, profile in enumerate(PROFILES):
            if profile in outcomes:
                out[row, col] = outcomes[profile]
    return out


@pytest.mark.parametrize("exact_search_max", [20_000, 0])
def test_neighbours_outcomes_are_the_ones_chroma_holds(tmp_path: Path, exact_search_max: int) -> None:
    history = ChromaHistory(tmp_path / "chroma", exact_search_max=exact_search_max)
    stored = records()
    history.upsert(stored)
    history.update_outcome("r0007", "a", ModelOutcome(quality=0.125))  # a merge (feedback) reaches both
    queries = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in stored[:40]])
    found = history.neighbours(queries, 10, PROFILES)
    for row, ids in enumerate(found.ids):
        assert len(ids) == 10
        np.testing.assert_array_equal(found.outcomes[row], from_metadata(history, ids))
    assert found.ids[7][0] == "r0007" and found.outcomes[7, 0, 0, 0] == 0.125


def test_exact_and_approximate_search_give_the_same_neighbours_and_estimates(tmp_path: Path) -> None:
    stored = records()
    exact = ChromaHistory(tmp_path / "exact", exact_search_max=20_000)
    approximate = ChromaHistory(tmp_path / "hnsw", exact_search_max=0)
    exact.upsert(stored)
    approximate.upsert(stored)
    queries = unit(np.random.default_rng(5).normal(size=(30, 16)))
    one, other = exact.neighbours(queries, 8, PROFILES), approximate.neighbours(queries, 8, PROFILES)
    assert one.ids == other.ids
    np.testing.assert_allclose(one.similarity, other.similarity, atol=1e-5)
    np.testing.assert_array_equal(one.outcomes, other.outcomes)


def test_a_neighbour_query_asks_chroma_for_ids_and_distances_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = ChromaHistory(tmp_path / "chroma", exact_search_max=0)
    history.upsert(records())
    collection = history._store()
    asked: list[Any] = []
    query = collection.query

    def spied(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("include"))
        return query(*args, **kwargs)

    monkeypatch.setattr(collection, "query", spied)
    found = history.neighbours(unit(np.ones((1, 16))), 5, PROFILES)
    assert asked == [["distances"]]
    assert not np.isnan(found.outcomes).all()


def test_a_restarted_store_has_its_means_and_clusters_without_reading_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At a million records, a mean computed on the first query took minutes: it is kept on disk instead.
    stored = records()
    centres = unit(np.random.default_rng(3).normal(size=(4, 16)))
    first = ChromaHistory(tmp_path / "chroma", exact_search_max=0)  # as above 20,000 records
    first.upsert(stored[:200])
    first.cluster_stats(centres, PROFILES)
    first.upsert(stored[200:])  # kept up to date after the clusters were made
    means, clusters = first.profile_means(PROFILES), first.cluster_stats(centres, PROFILES)

    restarted = ChromaHistory(tmp_path / "chroma", exact_search_max=0)
    reads: list[Any] = []
    get = restarted._store().get

    def spied(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("include"))
        return get(*args, **kwargs)

    monkeypatch.setattr(restarted._store(), "get", spied)
    np.testing.assert_allclose(restarted.profile_means(PROFILES), means)
    np.testing.assert_allclose(restarted.cluster_stats(centres, PROFILES).sums, clusters.sums)
    assert reads == []
    quality = [[o.outcomes[p].quality for o in stored if p in o.outcomes] for p in PROFILES]
    np.testing.assert_allclose(means[:, 0], [np.mean(q) for q in quality])
    assert clusters.counts[:, :, 0].sum() == sum(len(q) for q in quality)


def test_a_missing_table_is_rebuilt_from_chroma(tmp_path: Path) -> None:
    history = ChromaHistory(tmp_path / "chroma")
    history.upsert(records())
    means = history.profile_means(PROFILES)
    for table in (tmp_path / "chroma").glob("llm-router-outcomes-*"):
        table.unlink()
    rebuilt = ChromaHistory(tmp_path / "chroma")
    np.testing.assert_allclose(rebuilt.profile_means(PROFILES), means)
    assert rebuilt.count() == 300


def test_records_of_earlier_releases_with_flat_fields_are_read(tmp_path: Path) -> None:
    history = ChromaHistory(tmp_path / "chroma")
    vector = unit(np.ones((1, 16)))
    history._store().add(ids=["old"], embeddings=vector, metadatas=[{"q|a": 0.75, "ct|a": 40, "task": "x"}])
    fresh = ChromaHistory(tmp_path / "chroma")
    found = fresh.neighbours(vector, 1, ["a"])
    assert found.outcomes[0, 0, 0].tolist()[:3] == [0.75, pytest.approx(math.nan, nan_ok=True), 40.0]
    fresh.update_outcome("old", "a", ModelOutcome(prompt_tokens=12))  # merged into the flat fields' values
    assert decode_outcomes(fresh._store().get(ids=["old"], include=["metadatas"])["metadatas"][0])["a"][:3] == [
        0.75, 12.0, 40.0]


def test_two_processes_on_one_table_see_each_other_s_writes(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    one, other = OutcomeTable(path), OutcomeTable(path)
    one.write(["x", "y"], [{"a": [1.0, 10, 20, 0.1]}, {"a": [0.0, 30, 40, 0.3]}], None)
    assert other.statistics(["a"]).counts[0, 0, 0] == 2  # read by the other connection
    other.write(["x"], [{"a": [0.5, math.nan, math.nan, math.nan]}], None, merge=True)
    stats = one.statistics(["a"])
    assert stats.sums[0, 0].tolist() == pytest.approx([0.5, 40.0, 60.0, 0.4])  # x moved once, y unchanged
    assert one.count() == 2
    np.testing.assert_array_equal(one.outcomes(["x"], ["a"])[0, 0], [0.5, 10, 20, 0.1])


def test_a_replaced_record_moves_the_statistics_once_and_profiles_added_later_are_read(tmp_path: Path) -> None:
    table = OutcomeTable(None)
    table.write(["x"], [{"a": [1.0, 1, 1, 1]}], None)
    table.write(["x"], [{"a": [0.0, 1, 1, 1]}], None)  # written again (replaced)
    table.write(["y"], [{"b": [0.5, 2, 2, 2]}], None)  # a profile onboarded later: rows before it are narrower
    stats = table.statistics(["a", "b", "unknown"])
    assert stats.counts[0, :, 0].tolist() == [1, 1, 0]
    assert stats.sums[0, 0, 0] == 0.0 and stats.maxes[0, 0, 0] == 1.0  # the maximum stays an upper bound
    assert np.isnan(table.outcomes(["x"], ["b"])).all() and table.count() == 2


def _vector(rng: np.random.Generator, dimension: int = 8) -> np.ndarray:
    return unit(rng.normal(size=(1, dimension)))[0]


def test_feedback_on_a_record_this_table_has_not_seen_yet_keeps_its_other_outcomes() -> None:
    # Feedback may reach a host before that host's table caught up with the record another host wrote.
    import chromadb

    rng = np.random.default_rng(0)
    client = chromadb.EphemeralClient()
    writer = ChromaHistory(client=client, collection="feedback-early")
    other = ChromaHistory(client=client, collection="feedback-early")
    writer.upsert([HistoryRecord(id="a", embedding=_vector(rng), outcomes={"p1": ModelOutcome(quality=0.5)})])
    other.count()  # in step now; the next record arrives between two of its syncs
    writer.upsert([HistoryRecord(id="x", embedding=_vector(rng), outcomes={
        "p1": ModelOutcome(quality=1.0), "p2": ModelOutcome(quality=0.9)})])
    other.update_outcome("x", "p1", ModelOutcome(cost_usd=0.01))
    np.testing.assert_allclose(other.profile_means(["p1", "p2"])[:, [0, 3]], [[0.75, 0.01], [0.9, np.nan]])
    assert other.count() == 2


def test_a_collection_deleted_and_created_again_is_read_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    import chromadb

    import llm_router_plugin.history as history_module

    rng = np.random.default_rng(1)
    client = chromadb.EphemeralClient()
    history = ChromaHistory(client=client, collection="recreated")
    history.upsert([HistoryRecord(id=f"r{i}", embedding=_vector(rng), outcomes={"p": ModelOutcome(quality=1.0)})
                    for i in range(2)])
    client.delete_collection("recreated")
    client.create_collection("recreated", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    assert history.count() == 0
    history.upsert([HistoryRecord(id="new", embedding=_vector(rng), outcomes={"p": ModelOutcome(quality=0.0)})])
    assert history.count() == 1 and history.profile_means(["p"])[0, 0] == 0.0


def test_centres_of_another_dimension_do_not_survive_a_rebuild(tmp_path: Path) -> None:
    # The operator moved to an embedder of another width, and history was imported anew elsewhere.
    import chromadb

    rng = np.random.default_rng(2)
    client = chromadb.EphemeralClient()
    history = ChromaHistory(tmp_path, client=client, collection="other-width")
    history.label_clusters(np.eye(4, dtype=np.float32))
    history.upsert([HistoryRecord(id="a", embedding=_vector(rng, 4), outcomes={"p": ModelOutcome(quality=1.0)})])
    client.delete_collection("other-width")
    ChromaHistory(client=client, collection="other-width").upsert(
        [HistoryRecord(id="b", embedding=_vector(rng, 8), outcomes={"p": ModelOutcome(quality=0.5)})])
    restarted = ChromaHistory(tmp_path, client=client, collection="other-width")
    assert restarted.profile_means(["p"])[0, 0] == 0.5
    assert restarted.cluster_stats(np.eye(8, dtype=np.float32)[:2], ["p"]).counts.sum() == 1


def test_a_catch_up_cut_short_reads_the_rest_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import chromadb
    import httpx

    import llm_router_plugin.history as history_module

    clock = [1000.0]
    monkeypatch.setattr(history_module.time, "time", lambda: clock[0])
    rng = np.random.default_rng(3)
    client = chromadb.EphemeralClient()
    writer = ChromaHistory(client=client, collection="cut-short")
    reader = ChromaHistory(client=client, collection="cut-short")
    writer.upsert([HistoryRecord(id=f"r{i}", embedding=_vector(rng), outcomes={"p": ModelOutcome(quality=0.0)})
                   for i in range(4)])
    assert reader.count() == 4
    clock[0] = 2000.0
    writer.update_outcome("r3", "p", ModelOutcome(quality=1.0))  # merged first, but last in insertion order
    clock[0] = 3000.0
    writer.update_outcome("r0", "p", ModelOutcome(quality=1.0))
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)
    monkeypatch.setattr(reader, "_batch", lambda: 1)
    pages = reader._pages

    def cut_short(include: list[str], where: Any = None) -> Any:
        for number, page in enumerate(pages(include, where)):
            if number == 1:
                raise httpx.ConnectError("the server went away")
            yield page

    monkeypatch.setattr(reader, "_pages", cut_short)
    reader.profile_means(["p"])
    monkeypatch.setattr(reader, "_pages", pages)
    assert reader.profile_means(["p"])[0, 0] == 0.5  # both merges, once the store answers again


def test_two_connections_committing_back_to_back_keep_every_statistic(tmp_path: Path) -> None:
    # Another process commits right after this one's COMMIT: this one must not take its copy for current.
    path = tmp_path / "outcomes.sqlite3"
    one, other = OutcomeTable(path), OutcomeTable(path)

    class Interleaved:
        def __init__(self, connection: Any) -> None:
            self.connection, self.fire = connection, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.connection, name)

        def execute(self, sql: str, *args: Any) -> Any:
            result = self.connection.execute(sql, *args)
            if sql == "COMMIT" and self.fire:
                self.fire = False
                other.write(["b"], [{"p": [0.2, 1, 1, 1]}], None)
            return result

    one._conn = Interleaved(one._conn)  # type: ignore[assignment]
    one.write(["a0"], [{"p": [0.4, 1, 1, 1]}], None)
    one._conn.fire = True  # type: ignore[attr-defined]
    one.write(["a"], [{"p": [1.0, 1, 1, 1]}], None)
    one.write(["c"], [{"p": [0.6, 1, 1, 1]}], None)
    stats = other.statistics(["p"])
    assert (one.count(), other.count(), stats.counts[0, 0, 0]) == (4, 4, 4)
    assert stats.sums[0, 0, 0] == pytest.approx(2.2)


def test_a_query_with_nan_similarities_still_gets_k_neighbours() -> None:
    from llm_router_plugin.exact_index import ExactIndex

    vectors = unit(np.random.default_rng(4).normal(size=(10, 4)))
    queries = np.stack([vectors[0], np.full(4, np.nan, dtype=np.float32)])
    ids, _ = ExactIndex([f"r{i}" for i in range(10)], vectors).search(queries, 3)
    assert [len(row) for row in ids] == [3, 3] and ids[0][0] == "r0"


def test_a_relabelling_lets_other_processes_write_between_its_pages(tmp_path: Path) -> None:
    # Relabelling a big history takes minutes: a single transaction around it failed other processes' writes
    # ("database is locked") and with them their routes and feedback.
    path = tmp_path / "outcomes.sqlite3"
    one, other = OutcomeTable(path), OutcomeTable(path)
    other._conn.execute("PRAGMA busy_timeout = 100")
    rng = np.random.default_rng(5)
    vectors = unit(rng.normal(size=(40, 4)))
    rows = [{"p": [float(rng.random()), 1, 1, 1]} for _ in range(40)]
    ids = [f"r{i}" for i in range(40)]
    one.write(ids, rows, vectors)
    centres = unit(rng.normal(size=(3, 4)))
    extra = unit(rng.normal(size=(1, 4)))

    def pages() -> Any:
        for start in range(0, 40, 10):
            yield ids[start : start + 10], vectors[start : start + 10]
            if start == 10:  # another process writes meanwhile: a new record, and one of a page already labelled
                other.write(["new", "r0"], [{"p": [0.5, 1, 1, 1]}, {"p": [0.25, 1, 1, 1]}],
                            np.concatenate([extra, vectors[:1]]))

    one.relabel(centres, pages())
    stats = one.statistics(["p"])
    labels = np.argmax(np.concatenate([vectors, extra]) @ centres.T, axis=1)
    quality = np.array([r["p"][0] for r in rows] + [0.5])
    quality[0] = 0.25
    for cluster in range(3):
        assert stats.counts[1 + cluster, 0, 0] == (labels == cluster).sum()
        assert stats.sums[1 + cluster, 0, 0] == pytest.approx(quality[labels == cluster].sum())
    assert stats.counts[0, 0, 0] == 41 and stats.sums[0, 0, 0] == pytest.approx(quality.sum())


def test_processes_that_find_the_table_missing_rebuild_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    # After an upgrade, every proxy worker starts without a table: one builds it, the others wait for it instead of
    # each wiping the others' progress.
    import threading

    ChromaHistory(tmp_path / "chroma").upsert(records())
    for table in (tmp_path / "chroma").glob("llm-router-outcomes-*"):
        table.unlink()
    workers = [ChromaHistory(tmp_path / "chroma") for _ in range(3)]
    cleared: list[int] = []
    clear = OutcomeTable.clear

    def counted(self: OutcomeTable) -> None:
        cleared.append(1)
        threading.Event().wait(0.1)  # a rebuild takes a while: the others arrive meanwhile
        clear(self)

    monkeypatch.setattr(OutcomeTable, "clear", counted)
    threads = [threading.Thread(target=worker.count) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cleared) == 1
    assert [worker.count() for worker in workers] == [300, 300, 300]
