"""The bundled offline all-MiniLM-L6-v2: what a long prompt's vector is made of."""

from __future__ import annotations

import numpy as np
import pytest

from llm_router_plugin import SentenceTransformerEmbedder

pytestmark = pytest.mark.integration

# Few-shot examples longer than the model's 256-word-piece window, as in RouterBench's ARC and Winogrande prompts.
SHARED_PREFIX = " ".join(f"Question {i}: which planet is closest to the sun? Answer: Mercury." for i in range(40))
QUESTIONS = ["Question: what is the boiling point of water at sea level? Answer:",
             "Question: write a haiku about autumn leaves falling. Answer:"]


def test_prompts_sharing_a_long_prefix_get_their_questions_embedded() -> None:
    texts = [f"{SHARED_PREFIX}\n{q}" for q in QUESTIONS]
    tail = SentenceTransformerEmbedder(threads=1).embed(texts)
    head = SentenceTransformerEmbedder(threads=1, keep="head").embed(texts)
    assert tail.shape == (2, 384) and tail.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tail, axis=1), 1.0, rtol=1e-5)
    assert float(head[0] @ head[1]) > 0.9999  # the head only sees the shared examples
    assert float(tail[0] @ tail[1]) < 0.99  # the tail sees two different questions
    assert SentenceTransformerEmbedder(keep="head").name == "all-MiniLM-L6-v2@head"  # caches keep the two apart
    assert SentenceTransformerEmbedder().name == "all-MiniLM-L6-v2@tail"


def test_keep_is_checked() -> None:
    with pytest.raises(ValueError, match="keep"):
        SentenceTransformerEmbedder(keep="middle")  # type: ignore[arg-type]


def test_the_shipped_vector_pack_is_what_the_bundled_model_computes() -> None:
    # The pack spares a first import minutes of embedding: it must hold the default embedder's own vectors.
    from llm_router_plugin import bundled_path, read_data
    from llm_router_plugin.embedding_cache import text_key
    from llm_router_plugin.vector_pack import shipped_packs

    (pack,) = shipped_packs()
    embedder = SentenceTransformerEmbedder(threads=1)
    assert pack.model == embedder.name
    rows = read_data(bundled_path()).rows[::400]  # a few of every task
    live = embedder.embed([row.prompt for row in rows])
    packed = pack.lookup(text_key(row.prompt) for row in rows)
    cosines = [float(packed[text_key(row.prompt)] @ vector) for row, vector in zip(rows, live, strict=True)]
    assert min(cosines) > 0.9999, cosines
