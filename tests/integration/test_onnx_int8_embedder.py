"""The int8 all-MiniLM-L6-v2 on onnxruntime: the fp32 model's vectors, on the threads it is given, from a
quantized model built once per machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime.quantization
import pytest

from llm_router_plugin import SentenceTransformerEmbedder
from llm_router_plugin.dataset import bundled_path, read_data
from llm_router_plugin.embedding import MAX_EMBED_CHARS, OnnxInt8Embedder

pytestmark = pytest.mark.integration

#: Shipped prompts compared (of 3164); README "Embedding backends" has the figures over all of them.
SAMPLE = 200


def test_int8_vectors_match_fp32_on_the_shipped_prompts() -> None:
    prompts = sorted({row.prompt for row in read_data(bundled_path()).rows})
    sample = [prompts[i] for i in np.random.default_rng(0).choice(len(prompts), SAMPLE, replace=False)]
    fp32 = SentenceTransformerEmbedder().embed(sample)
    int8 = OnnxInt8Embedder().embed(sample)
    assert int8.shape == fp32.shape == (SAMPLE, 384) and int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, rtol=1e-5)
    cosines = np.sum(fp32 * int8, axis=1)
    # Over all shipped prompts the lowest cosine is 0.986 and under 1 % fall below 0.99 (README).
    assert cosines.min() >= 0.98, f"lowest cosine {cosines.min():.4f} on {sample[int(cosines.argmin())][:200]!r}"
    assert cosines.mean() >= 0.99


@pytest.mark.parametrize("keep", ["tail", "head"])
def test_int8_reads_the_same_end_of_a_long_prompt(keep: str) -> None:
    # Longer than MAX_EMBED_CHARS and far longer than the 256-word-piece window, with a question at each end.
    middle = " ".join(f"Example {i}: which planet is closest to the sun? Mercury." for i in range(200))
    texts = [f"Translate 'good morning' into French.\n{middle}\nWrite a haiku about autumn leaves.",
             f"Name the capital of Peru.\n{middle}\nExplain recursion to a child."]
    assert len(texts[0]) > MAX_EMBED_CHARS
    fp32 = SentenceTransformerEmbedder(keep=keep).embed(texts)  # type: ignore[arg-type]
    int8 = OnnxInt8Embedder(keep=keep).embed(texts)  # type: ignore[arg-type]
    assert np.sum(fp32 * int8, axis=1).min() >= 0.99
    assert float(int8[0] @ int8[1]) < 0.99  # each prompt's own end is read, not the shared examples


def test_one_thread_unless_told() -> None:
    import torch

    torch.set_num_threads(2)
    SentenceTransformerEmbedder().embed(["hello"])
    assert torch.get_num_threads() == 1  # torch's count is per process: set when the model loads
    for threads in (1, 2):
        embedder = OnnxInt8Embedder() if threads == 1 else OnnxInt8Embedder(threads=threads)
        embedder.embed(["hello"])
        options = embedder._load()[1].get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)


@pytest.fixture
def quantizations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Quantize into an empty cache folder; the list holds the path of every model quantized."""
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path))
    made: list[str] = []
    quantize = onnxruntime.quantization.quantize_dynamic

    def counted(model_input: Any, model_output: Any, **kwargs: Any) -> None:
        made.append(str(model_output))
        quantize(model_input, model_output, **kwargs)

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", counted)
    return made


def test_the_quantized_model_is_built_once_and_reused(quantizations: list[str], tmp_path: Path) -> None:
    first = OnnxInt8Embedder().embed(["What is the capital of France?"])
    cached = [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]
    assert len(quantizations) == 1 and len(cached) == 1  # no temporary file left beside it
    second = OnnxInt8Embedder(keep="head").embed(["What is the capital of France?"])
    assert len(quantizations) == 1  # the second embedder loads the cached file
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_a_damaged_cached_model_is_built_again(quantizations: list[str], tmp_path: Path) -> None:
    expected = OnnxInt8Embedder().embed(["What is the capital of France?"])
    (cached,) = [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short, as by a full disk
    again = OnnxInt8Embedder().embed(["What is the capital of France?"])
    assert len(quantizations) == 2
    np.testing.assert_allclose(again, expected, atol=1e-6)
