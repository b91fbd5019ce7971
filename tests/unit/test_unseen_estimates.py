"""One estimator, both regimes: models known only by profile answers get per-cluster estimates, and move to k-NN
estimates as their own outcomes accumulate near a query."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import ChromaHistory, EstimatorConfig, HashingEmbedder, HistoryRecord, KnnEstimator, ModelOutcome
from llm_router_plugin.profiles import build_profile_set
from tests.conftest import QUALITY, topic_history, topic_prompt

NEW = "new-model"
# The new model is good at chat and bad at math, the reverse of what a global mean would suggest for either.
NEW_QUALITY = {"math": 0.0, "code": 0.5, "chat": 1.0}
PROFILES = ["big-model", "small-model", NEW]


@pytest.fixture
def store(tmp_path: Path, embedder: HashingEmbedder) -> ChromaHistory:
    history = ChromaHistory(tmp_path / "chroma")
    history.upsert(topic_history(embedder))
    return history


def _centres(embedder: HashingEmbedder) -> np.ndarray:
    texts = [topic_prompt(t, i) for t in QUALITY for i in range(20)]
    ids = [f"{t}-{i}" for t in QUALITY for i in range(20)]
    return build_profile_set(ids, embedder.embed(texts), texts, [None] * len(ids), embedding_model=embedder.name,
                             size=9, clusters=3).centres


def _onboard(store: ChromaHistory, per_topic: int = 3) -> None:
    for topic, quality in NEW_QUALITY.items():
        for i in range(per_topic):  # a profile: a few answers per cluster
            store.update_outcome(f"{topic}-{i}", NEW, ModelOutcome(quality=quality, completion_tokens=50))


def _quality(estimator: KnnEstimator, embedder: HashingEmbedder, topic: str) -> np.ndarray:
    return estimator.estimate(embedder.embed([topic_prompt(topic, 99)]), PROFILES).quality[0]


def test_an_onboarded_model_is_estimated_per_cluster(store: ChromaHistory, embedder: HashingEmbedder) -> None:
    _onboard(store)
    config = EstimatorConfig(region_weight=0, tie_break=0)
    clustered = KnnEstimator(store, config, _centres(embedder))
    math, chat = _quality(clustered, embedder, "math")[2], _quality(clustered, embedder, "chat")[2]
    # Three answers per cluster, shrunk by three pseudo-answers of its profile mean (0.5): 0.25 and 0.75.
    assert math == pytest.approx(0.25, abs=0.05) and chat == pytest.approx(0.75, abs=0.05)
    # Without centres the whole history is one cluster: estimates lean on the profile mean (0.5) everywhere.
    flat = KnnEstimator(store, config)
    assert abs(_quality(flat, embedder, "math")[2] - 0.5) > 0 < abs(_quality(flat, embedder, "chat")[2] - 0.5)
    assert _quality(flat, embedder, "chat")[2] - _quality(flat, embedder, "math")[2] < chat - math


def test_models_every_neighbour_knows_keep_their_knn_estimates(store: ChromaHistory, embedder: HashingEmbedder) -> None:
    _onboard(store)
    config = EstimatorConfig(region_weight=0, tie_break=0)
    clustered = KnnEstimator(store, config, _centres(embedder))
    for topic, (big, small) in QUALITY.items():
        assert _quality(clustered, embedder, topic)[:2] == pytest.approx([big, small])


def test_outcomes_near_a_query_move_the_estimate_from_cluster_to_neighbours(
    store: ChromaHistory, embedder: HashingEmbedder
) -> None:
    _onboard(store, per_topic=3)
    estimator = KnnEstimator(store, EstimatorConfig(region_weight=0, tie_break=0), _centres(embedder))
    before = _quality(estimator, embedder, "chat")[2]
    # Traffic answered by the new model on this very query, scored low by feedback: the k nearest now carry it.
    texts = [topic_prompt("chat", 99)] * 5
    store.upsert([HistoryRecord(id=f"traffic-{i}", embedding=v, outcomes={NEW: ModelOutcome(quality=0.0)})
                  for i, v in enumerate(embedder.embed(texts))])
    after = _quality(estimator, embedder, "chat")[2]
    assert before == pytest.approx(0.75, abs=0.05)
    assert after < 0.2


def test_traffic_without_scores_does_not_dilute_known_models(store: ChromaHistory, embedder: HashingEmbedder) -> None:
    estimator = KnnEstimator(store, EstimatorConfig(region_weight=0, tie_break=0), _centres(embedder))
    before = _quality(estimator, embedder, "math")
    texts = [topic_prompt("math", 99)] * 5
    store.upsert([HistoryRecord(id=f"traffic-{i}", embedding=v,
                                outcomes={"big-model": ModelOutcome(prompt_tokens=10, completion_tokens=900)})
                  for i, v in enumerate(embedder.embed(texts))])
    assert _quality(estimator, embedder, "math") == pytest.approx(before)


def test_cluster_statistics_follow_writes_made_after_they_were_read(
    store: ChromaHistory, embedder: HashingEmbedder
) -> None:
    centres = _centres(embedder)
    assert store.cluster_stats(centres, [NEW]).counts.sum() == 0
    _onboard(store, per_topic=2)
    stats = store.cluster_stats(centres, [NEW])
    assert stats.counts[:, 0, 0].sum() == 6 and stats.sums[:, 0, 0].sum() == pytest.approx(2 * 1.5)
    assert np.nanmax(stats.maxes[:, 0, 2]) == 50  # the longest answer: the high side of a cluster
    store.update_outcome("chat-0", NEW, ModelOutcome(quality=0.0))  # a changed score replaces the old one
    stats = store.cluster_stats(centres, [NEW])
    assert stats.counts[:, 0, 0].sum() == 6 and stats.sums[:, 0, 0].sum() == pytest.approx(2.0)


def test_an_onboarded_model_holds_its_longest_profile_answer(store: ChromaHistory, embedder: HashingEmbedder) -> None:
    _onboard(store)
    store.update_outcome("chat-1", NEW, ModelOutcome(completion_tokens=900))
    estimator = KnnEstimator(store, EstimatorConfig(region_weight=0, tie_break=0), _centres(embedder))
    estimates = estimator.estimate(embedder.embed([topic_prompt("chat", 99)]), PROFILES)
    # Few neighbours know the new model: its hold covers the longest answer it gave in this cluster.
    assert estimates.completion_tokens_high[0, 2] == 900
    assert estimates.completion_tokens[0, 2] < 900


def test_a_model_without_token_counts_is_held_at_the_longest_answer_any_model_gave(
    store: ChromaHistory, embedder: HashingEmbedder
) -> None:
    # Onboarded from an endpoint that reported no usage: scores only, no completion tokens to size its hold on.
    for i in range(3):
        store.update_outcome(f"math-{i}", NEW, ModelOutcome(quality=0.9))
    estimator = KnnEstimator(store, EstimatorConfig(region_weight=0, tie_break=0), _centres(embedder))
    estimates = estimator.estimate(embedder.embed([topic_prompt("math", 99)]), PROFILES)
    assert estimates.completion_tokens_high[0, 2] >= 900  # big-model's answers near this query are 900 tokens


def test_two_concurrent_merges_into_one_record_count_once(store: ChromaHistory) -> None:
    import threading

    collection = store._collection
    original = collection.get
    meeting = threading.Barrier(2, timeout=2)

    class Meeting:
        """Lets both merges read the record before either writes, if nothing keeps them apart."""

        def __getattr__(self, name: str) -> object:
            return getattr(collection, name)

        def get(self, *args: object, **kwargs: object) -> object:
            got = original(*args, **kwargs)
            if kwargs.get("include") == ["metadatas", "embeddings"]:
                with contextlib.suppress(threading.BrokenBarrierError):
                    meeting.wait()
            return got

    store.profile_means([NEW])  # statistics cached: merges now adjust them
    store._collection = Meeting()
    threads = [threading.Thread(target=store.update_outcome, args=("math-0", NEW, ModelOutcome(quality=q)))
               for q in (0.0, 1.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store._collection = collection
    assert store._table.statistics([NEW]).counts[0, 0, 0] == 1  # one record carries the model's quality


def test_a_router_sees_outcomes_another_process_merged(
    tmp_path: Path, store: ChromaHistory, embedder: HashingEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm_router_plugin.history as history_module

    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)  # check at every query, not every 5 s
    centres = _centres(embedder)
    estimator = KnnEstimator(store, EstimatorConfig(region_weight=0, tie_break=0), centres)
    before = _quality(estimator, embedder, "chat")[2]
    # `llm-router onboard` in another process: its own client on the same folder merges the profile outcomes.
    other = ChromaHistory(tmp_path / "chroma")
    for i in range(5):
        other.update_outcome(f"chat-{i}", NEW, ModelOutcome(quality=1.0, completion_tokens=20))
    after = _quality(estimator, embedder, "chat")[2]
    assert before == pytest.approx(0.5) and after > 0.8
    assert store.profile_means([NEW])[0][0] == pytest.approx(1.0)
