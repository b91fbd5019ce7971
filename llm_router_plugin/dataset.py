"""Routing data in the unified schema, and importing it into history.

A file (gzip or plain CSV, or JSONL with the same keys) has the columns ``prompt``, ``eval_name``, ``split``,
``sample_id``, then per model ``M``: ``M`` (quality in [0, 1]) and optionally ``M|total_cost`` (USD),
``M|prompt_tokens``, ``M|completion_tokens`` and ``M|response`` (the model's answer text). An empty cell is a missing
value, and so are the cells a CSV row lacks at its end; ``nan``, ``inf``, out-of-range scores, negative costs or
counts, and a CSV row with more cells than the header are errors that reject their row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import sys
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_router_plugin.embedding import Embedder, estimate_tokens
from llm_router_plugin.errors import HistoryFormatError
from llm_router_plugin.history import ChromaHistory, HistoryRecord, ModelOutcome
from llm_router_plugin.pricing import Price, completion_tokens_from_cost, read_prices

_BASE_COLUMNS = ("prompt", "eval_name", "split", "sample_id")
_SUFFIX = {"total_cost": "cost_usd", "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens"}
_ANSWER_SUFFIX = "response"
# The CSV module's default field limit (128 KiB) is below some real prompts.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class DataRow:
    """One query of a routing data file.

    Attributes:
        line: line (CSV) or record (JSONL) number, for messages.
        prompt: the query text.
        task: the ``eval_name`` label.
        split: the source's own split label.
        sample_id: the source's id.
        outcomes: model → outcome.
        answers: model → the answer text it gave, where the file records one.
    """

    line: int
    prompt: str
    task: str
    split: str
    sample_id: str
    outcomes: dict[str, ModelOutcome] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)

    @property
    def record_id(self) -> str:
        """A stable id: the same row imported twice is one record."""
        return "h" + hashlib.sha256(f"{self.sample_id}\0{self.prompt}".encode()).hexdigest()[:24]


@dataclass
class DataFile:
    """A parsed data file.

    Attributes:
        path: where it came from.
        models: the models found in its columns, in column order.
        rows: the valid rows.
        rejected: line number → why that row was rejected.
    """

    path: Path
    models: list[str]
    rows: list[DataRow]
    rejected: dict[int, str]

    def rejection_summary(self, most: int = 5) -> str:
        """One sentence counting the rejected rows and naming the first few."""
        if not self.rejected:
            return "no rows rejected"
        first = "; ".join(f"line {line}: {why}" for line, why in list(self.rejected.items())[:most])
        more = f" (+{len(self.rejected) - most} more)" if len(self.rejected) > most else ""
        return f"{len(self.rejected)} row(s) rejected — {first}{more}"


def bundled_path(name: str = "routerbench_sample.csv.gz") -> Path:
    """Path of a data file shipped in the package (see ``llm_router_plugin/data/README.md``)."""
    return Path(str(resources.files("llm_router_plugin") / "data" / name))


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    raw: IO[bytes] = gzip.open(path, "rb") if gzipped else path.open("rb")  # type: ignore[assignment]  # noqa: SIM115
    # Invalid UTF-8 in a prompt is replaced, not fatal: the row is still a valid routing example.
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV or JSONL file (gzip or plain); a row that cannot be read is ``{"__error__": why}``.

    A file is JSONL by its name (``.jsonl``, ``.jsonl.gz``, ``.ndjson``) or when it starts with ``{``.
    """
    with _open_text(path) as fh:
        first = fh.read(1)
        while first.isspace():
            first = fh.read(1)
        fh.seek(0)
        if path.name.endswith((".jsonl", ".jsonl.gz", ".ndjson")) or first == "{":
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        value = {"__error__": f"invalid JSON ({exc.msg})"}
                    yield number, value if isinstance(value, dict) else {"__error__": "not a JSON object"}
        else:
            yield from _csv_records(fh)


def _csv_records(fh: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    # csv.reader, not DictReader: DictReader files extra cells under the key None and numbers records, not lines
    # (a quoted prompt may span several lines).
    reader = csv.reader(fh)
    header = next(reader, [])
    start = reader.line_num + 1
    for cells in reader:
        extra = len(cells) - len(header)
        if extra > 0:
            yield start, {"__error__": f"{extra} cell(s) more than the header ({len(header)} columns)"}
        elif cells:  # [] is a blank line
            yield start, dict(zip(header, cells, strict=False))  # a short row's missing cells are missing values
        start = reader.line_num + 1


def _number(value: Any, column: str, low: float, high: float) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column}={value!r} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{column}={value!r} is outside [{low}, {high}]")
    return number


def _models(keys: Sequence[str]) -> list[str]:
    models = []
    for key in keys:
        if key in _BASE_COLUMNS or key.startswith("__"):
            continue
        model, _, suffix = key.partition("|")
        if suffix and suffix not in _SUFFIX and suffix != _ANSWER_SUFFIX:
            continue
        if model not in models:
            models.append(model)
    return models


def _parse_row(line: int, raw: dict[str, Any], models: list[str]) -> DataRow:
    if "__error__" in raw:
        raise ValueError(raw["__error__"])
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt")
    outcomes = {}
    for model in models:
        fields: dict[str, Any] = {"quality": _number(raw.get(model), model, 0.0, 1.0)}
        for suffix, name in _SUFFIX.items():
            value = _number(raw.get(f"{model}|{suffix}"), f"{model}|{suffix}", 0.0, math.inf)
            fields[name] = int(value) if value is not None and name != "cost_usd" else value
        if any(v is not None for v in fields.values()):
            outcomes[model] = ModelOutcome(**fields)
    answers = {model: text for model in models
               if isinstance(text := raw.get(f"{model}|{_ANSWER_SUFFIX}"), str) and text}
    return DataRow(line, prompt, str(raw.get("eval_name") or ""), str(raw.get("split") or ""),
                   str(raw.get("sample_id") or line), outcomes, answers)


def read_data(path: str | Path) -> DataFile:
    """Parse a routing data file, keeping valid rows and counting rejected ones.

    Args:
        path: CSV (optionally gzip) or JSONL in the unified schema.

    Returns:
        The rows, the models, and why each rejected row was rejected.

    Raises:
        HistoryFormatError: the file cannot be read (a folder, no permission, a damaged gzip stream) or has no
            ``prompt`` column or no model columns.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    try:
        raw_rows = list(read_records(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such data file: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or exc  # "Is a directory", not "[Errno 21] Is a directory: '<path>'"
        raise HistoryFormatError(f"{path}: cannot read the data file ({reason})") from None
    keys: list[str] = []
    for _, raw in raw_rows:
        keys.extend(k for k in raw if k not in keys and k != "__error__")
    if "prompt" not in keys:
        raise HistoryFormatError(f"{path}: no 'prompt' column (columns: {keys[:8]})")
    models = _models(keys)
    if not models:
        raise HistoryFormatError(f"{path}: no model columns (expected '<model>' and '<model>|total_cost')")
    rows, rejected = [], {}
    for line, raw in raw_rows:
        try:
            rows.append(_parse_row(line, raw, models))
        except ValueError as exc:
            rejected[line] = str(exc)
    return DataFile(path, models, rows, rejected)


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    Attributes:
        added: records written.
        existing: rows already in the store (skipped: import is idempotent).
        rejected: rows rejected for invalid values.
        models: the models found in the file.
        message: the rejection summary.
        seconds: wall time of the import, embedding included.
        embedding_seconds: the part of ``seconds`` spent embedding (reading the embedding cache included).
    """

    added: int
    existing: int
    rejected: int
    models: list[str]
    message: str
    seconds: float = 0.0
    embedding_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Records added per second of the whole import (0 when nothing was added)."""
        return self.added / self.seconds if self.added and self.seconds > 0 else 0.0

    @property
    def write_rate(self) -> float:
        """Records added per second of writing, embedding excluded (0 when nothing was added)."""
        writing = self.seconds - self.embedding_seconds
        return self.added / writing if self.added and writing > 0 else 0.0


#: Shipped data files → the shipped list prices their costs were computed with.
_SHIPPED_PRICES = {"routerbench_sample.csv.gz": "routerbench_prices.json"}


def shipped_prices(path: str | Path) -> dict[str, Price] | None:
    """The list prices of a shipped data file (``None`` for any other file).

    Args:
        path: the data file.

    Returns:
        Model → price, or ``None``.
    """
    name = _SHIPPED_PRICES.get(Path(path).name)
    if name is None or Path(path).resolve() != bundled_path(Path(path).name).resolve():
        return None
    return read_prices(bundled_path(name))


def _with_tokens(row: DataRow, prices: Mapping[str, Price]) -> dict[str, ModelOutcome]:
    """A row's outcomes with the token counts the file lacks: prompt tokens estimated from the text, and completion
    tokens implied by the recorded cost at the model's price (where ``prices`` has one).

    History then knows tokens beside costs: a deployment's cost is estimated from its neighbours' tokens at its own
    price, and a file with costs only would otherwise leave every completion at ``default_completion_tokens``.
    """
    estimated = estimate_tokens(row.prompt)
    outcomes = {}
    for model, outcome in row.outcomes.items():
        update: dict[str, int] = {}
        prompt = outcome.prompt_tokens if outcome.prompt_tokens is not None else estimated
        if outcome.prompt_tokens is None:
            update["prompt_tokens"] = prompt
        price = prices.get(model)
        if outcome.completion_tokens is None and outcome.cost_usd is not None and price is not None:
            implied = completion_tokens_from_cost(outcome.cost_usd, prompt, price)
            if implied is not None:
                update["completion_tokens"] = implied
        outcomes[model] = outcome.model_copy(update=update) if update else outcome
    return outcomes


def import_history(
    data: DataFile, store: ChromaHistory, embedder: Embedder, *, batch_size: int = 256, write_batch: int = 4096,
    store_prompts: bool = False, progress: bool = False, prices: Mapping[str, Price] | None = None,
) -> ImportReport:
    """Embed a data file's valid rows and write them to history in large batches.

    Rows are embedded ``batch_size`` at a time and written ``write_batch`` at a time: a store write has a fixed
    cost per call, so few large writes are faster than many small ones. A write batch is embedded completely before
    any of it is written, so an interrupted import leaves whole write batches only; rows already stored are skipped
    without being embedded again (and an embedder wrapped in a
    :class:`~llm_router_plugin.embedding_cache.CachingEmbedder` embeds no text it embedded before).

    Args:
        data: the parsed file (see :func:`read_data`).
        store: the history store.
        embedder: embeds the prompts.
        batch_size: rows per embedding call.
        write_batch: rows per store write.
        store_prompts: keep prompt texts in the store (off: embeddings only, as the config's default;
            :meth:`Router.import_history <llm_router_plugin.Router.import_history>` follows the router's config).
        progress: show a progress bar.
        prices: model → list price, to derive completion tokens from the costs of a file that records no token
            counts (default: the shipped prices for the shipped sample, none for other files).

    Returns:
        Counts of added, existing and rejected rows, and the time it took.

    Raises:
        ValueError: ``batch_size`` or ``write_batch`` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    if write_batch < 1:
        raise ValueError(f"write_batch: must be at least 1, got {write_batch}")
    from tqdm import tqdm

    if prices is None:
        prices = shipped_prices(data.path) or {}
    started = time.perf_counter()
    embedding_seconds = 0.0
    existing = store.existing_ids([row.record_id for row in data.rows])
    todo = [row for row in {r.record_id: r for r in data.rows}.values() if row.record_id not in existing]
    bar = tqdm(total=len(todo), desc=f"importing {data.path.name}", unit="row", disable=not progress)
    for start in range(0, len(todo), write_batch):
        batch = todo[start : start + write_batch]
        embedding_started = time.perf_counter()
        parts = []
        for offset in range(0, len(batch), batch_size):
            parts.append(embedder.embed([row.prompt for row in batch[offset : offset + batch_size]]))
            bar.update(min(batch_size, len(batch) - offset))
        vectors = np.concatenate(parts)
        embedding_seconds += time.perf_counter() - embedding_started
        store.upsert([
            HistoryRecord(id=row.record_id, embedding=vector, text=row.prompt if store_prompts else None,
                          task=row.task or None, outcomes=_with_tokens(row, prices))
            for row, vector in zip(batch, vectors, strict=True)
        ])
    bar.close()
    return ImportReport(len(todo), len(data.rows) - len(todo), len(data.rejected), data.models,
                        data.rejection_summary(), time.perf_counter() - started, embedding_seconds)
