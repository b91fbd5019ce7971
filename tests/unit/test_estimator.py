from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import ChromaHistory, HashingEmbedder
from llm_router_plugin.config import EstimatorConfig
from llm_router_plugin.estimator import PRIOR_QUALITY, KnnEstimator, combine
from llm_router_plugin.history import FIELDS, Neighbours
from tests.conftest import TOPICS, topic_history, topic_prompt

NAN = np.nan


def neighbours(quality_rows: list[list[float]], sims: list[float]) -> Neighbours:
    """One query whose k neighbours have these (per profile) qualities; other fields missing."""
    k, p = len(quality_rows), len(quality_rows[0])
    outcomes = np.full((1, k, p, len(FIELDS)), NAN)
    outcomes[0, :, :, 0] = quality_rows
    return Neighbours([[str(i) for i in range(k)]], np.array([sims]), outcomes, tuple(f"p{i}" for i in range(p)))


def means(quality: list[float]) -> np.ndarray:
    out = np.full((len(quality), len(FIELDS)), NAN)
    out[:, 0] = quality
    return out


def test_plain_mean_skips_missing_outcomes() -> None:
    est = combine(neighbours([[1.0, NAN], [0.0, 1.0], [1.0, NAN]], [0.9, 0.8, 0.7]), means([0.5, 0.5]),
                  EstimatorConfig(k=3))
    assert est.quality[0].tolist() == pytest.approx([2 / 3, 1.0])
    assert est.support[0].tolist() == [3, 1]


def test_no_neighbour_outcome_falls_back_to_global_mean_then_prior() -> None:
    est = combine(neighbours([[NAN, NAN]], [0.9]), means([0.3, NAN]), EstimatorConfig(k=1))
    assert est.quality[0].tolist() == pytest.approx([0.3, PRIOR_QUALITY])
    assert est.completion_tokens[0].tolist() == [256, 256]  # the configured completion prior


def test_similarity_weighting_favours_the_closest() -> None:
    nb = neighbours([[1.0], [0.0]], [0.95, 0.60])
    plain = combine(nb, means([0.5]), EstimatorConfig(k=2)).quality[0, 0]
    weighted = combine(nb, means([0.5]), EstimatorConfig(k=2, weighting="similarity", temperature=0.05)).quality[0, 0]
    assert plain == pytest.approx(0.5)
    assert weighted > 0.99


def test_shrinkage_pulls_sparse_means_toward_the_profile_mean() -> None:
    nb = neighbours([[1.0]], [0.9])
    est = combine(nb, means([0.2]), EstimatorConfig(k=1, shrinkage=1.0))
    assert est.quality[0, 0] == pytest.approx(0.6)


def test_fewer_records_than_k() -> None:
    nb = neighbours([[1.0], [NAN]], [0.9, NAN])
    est = combine(nb, means([0.0]), EstimatorConfig(k=2))
    assert est.quality[0, 0] == pytest.approx(1.0)


def test_a_large_batch_on_chroma_matches_one_query_at_a_time(tmp_path: Path, embedder: HashingEmbedder) -> None:
    history = ChromaHistory(tmp_path / "chroma")
    history.upsert(topic_history(embedder, per_topic=40))
    estimator = KnnEstimator(history, EstimatorConfig(k=5, pool=50))
    queries = embedder.embed([topic_prompt(topic, i) for i in range(270) for topic in TOPICS])  # 810 × 50 hits
    batch = estimator.estimate(queries, ["big-model", "small-model"])
    assert batch.quality.shape == (810, 2)
    for row in (0, 404, 809):
        alone = estimator.estimate(queries[row : row + 1], ["big-model", "small-model"])
        np.testing.assert_allclose(batch.quality[row], alone.quality[0])
