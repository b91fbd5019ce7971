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
