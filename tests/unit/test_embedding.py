from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import EmptyQueryError, HashingEmbedder, estimate_tokens, extract_text
from llm_router_plugin.embedding import (
    MAX_EMBED_CHARS,
    OnnxInt8Embedder,
    cache_dir,
    embedding_space,
    make_embedder,
)


def test_extract_text_from_string_and_messages() -> None:
    assert extract_text("hi there") == "hi there"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "this?"}]},
    ]
    assert extract_text(messages) == "be brief\nwhat is\nthis?"


@pytest.mark.parametrize(
    "query",
    ["", "   \n\t", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], []],
)
def test_queries_without_text_are_rejected(query: object) -> None:
    with pytest.raises(EmptyQueryError, match="no text"):
        extract_text(query)  # type: ignore[arg-type]


def test_non_utf8_clean_text_is_repaired() -> None:
    text = extract_text("caf\udce9 ok")  # a lone surrogate, as left by a bad decode
    text.encode("utf-8")  # must not raise
    assert "ok" in text


def test_bad_query_type() -> None:
    with pytest.raises(ValueError, match="query"):
        extract_text(42)  # type: ignore[arg-type]


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    emb = HashingEmbedder(32)
    a = emb.embed(["the cat sat", "the cat sat", "quantum field theory"])
    assert a.shape == (3, 32)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert np.allclose(a[0], a[1])
    assert a[0] @ a[1] > a[0] @ a[2]


def test_long_prompt_is_truncated_for_embedding_but_counted_in_full() -> None:
    long = "word " * 40_000  # 200k characters
    emb = HashingEmbedder(16)
    assert np.allclose(emb.embed([long]), emb.embed([long[:MAX_EMBED_CHARS]]))
    assert estimate_tokens(long) == 50_000


def test_the_int8_embedder_is_named_apart_from_fp32_in_the_same_space() -> None:
    fp32, int8 = make_embedder(), make_embedder(backend="onnx-int8")
    assert isinstance(int8, OnnxInt8Embedder)
    assert (fp32.name, int8.name) == ("all-MiniLM-L6-v2@tail", "all-MiniLM-L6-v2@tail+onnx-qint8")  # caches apart
    assert embedding_space(int8.name) == embedding_space(fp32.name) == fp32.name
    head = make_embedder(keep="head", backend="onnx-int8").name
    assert head == "all-MiniLM-L6-v2@head+onnx-qint8" and embedding_space(head) != embedding_space(int8.name)


def test_derived_models_are_cached_where_the_environment_says(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.delenv("LLM_ROUTER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "llm-router"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "llm-router"
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"backend": "fp16"}, "embedding_backend"),
    ({"model": "my/model", "backend": "onnx-int8"}, "embedding_backend"),
    ({"threads": 0}, "threads"),
    ({"threads": 0, "backend": "onnx-int8"}, "threads"),
])
def test_bad_embedder_settings_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_embedder(**kwargs)

