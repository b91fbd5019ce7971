"""Onboarding a model from its answers on a profile set: each answer becomes that model's outcome in history.

The results file is what ``llm-router profile run`` writes (JSONL: ``id`` or ``prompt``, ``quality``,
``prompt_tokens``, ``completion_tokens``, ``cost_usd``; other keys are ignored), or the same columns in a CSV, or a
file in the unified data schema (``prompt`` and the model's own columns ``M``, ``M|total_cost``, ``M|prompt_tokens``,
``M|completion_tokens``). Every
row must name a prompt of the profile set; the whole file is checked before anything is written, so a bad file
writes nothing. A row whose call failed (``error`` set and no ``quality``/tokens) is skipped; a missing quality stays
missing (the tokens and cost are still learned). Onboarding the same file twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_router_plugin.dataset import read_records
from llm_router_plugin.embedding import Embedder
from llm_router_plugin.history import ChromaHistory, HistoryRecord, ModelOutcome
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet
from llm_router_plugin.validation import amount, score, token_count

_OUTCOME_KEYS = ("quality", "prompt_tokens", "completion_tokens", "cost_usd")
#: Unified-schema column suffixes of a model → the results-file keys.
_UNIFIED = {"": "quality", "|total_cost": "cost_usd", "|prompt_tokens": "prompt_tokens",
            "|completion_tokens": "completion_tokens"}


@dataclass(frozen=True)
class OnboardReport:
    """What onboarding wrote.

    Attributes:
        model: the model profile onboarded.
        updated: outcomes merged into history records that already existed.
        added: history records created (the profile prompt was not in this history: embedded now).
        scored: outcomes with a quality score.
        skipped: rows skipped because their call failed.
    """

    model: str
    updated: int
    added: int
    scored: int
    skipped: int


@dataclass
class ProfileResults:
    """A parsed results file.

    Attributes:
        outcomes: profile prompt → the model's outcome on it (the last row wins for a repeated prompt).
        skipped: rows whose call failed.
        errors: line → why the row is invalid.
    """

    outcomes: dict[str, tuple[ProfilePrompt, ModelOutcome]] = field(default_factory=dict)
    skipped: int = 0
    errors: dict[int, str] = field(default_factory=dict)


def _value(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _number(key: str, value: Any) -> Any:
    """A CSV cell's text as a number (JSON values pass through to the checks)."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{key}: {value[:40]!r} is not a number") from None


_CHECKS = {"quality": score, "prompt_tokens": token_count, "completion_tokens": token_count, "cost_usd": amount}


def _outcome(raw: dict[str, Any]) -> ModelOutcome:
    fields = {key: _CHECKS[key](key, _number(key, value)) for key in _OUTCOME_KEYS
              if (value := _value(raw, key)) is not None}
    if not fields:
        raise ValueError(f"no outcome: the row has none of {', '.join(_OUTCOME_KEYS)}")
    return ModelOutcome.model_validate(fields)


def read_results(path: str | Path, profile: ProfileSet, model: str) -> ProfileResults:
    """Parse a results file against a profile set, collecting every invalid row.

    Args:
        path: JSONL or CSV results (see the module docstring).
        profile: the profile set the answers were collected on.
        model: the model being onboarded (a row naming another ``model`` is invalid).

    Returns:
        The outcomes, the skipped rows and the errors (nothing is written).

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: no such file {path}")
    parsed = ProfileResults()
    for number, raw in read_records(path):
        try:
            if "__error__" in raw:
                raise ValueError(raw["__error__"])
            if model in raw:  # the unified data schema: the model's columns hold its outcome
                columns = {key: raw.get(model + suffix) for suffix, key in _UNIFIED.items()}
                raw = {"prompt": raw.get("prompt"), **columns}
            named = _value(raw, "model")
            if named is not None and str(named) != model:
                raise ValueError(f"model: the row is an answer of {named!r}, not {model!r}")
            key = _value(raw, "id") or _value(raw, "prompt")
            if key is None:
                raise ValueError("id: the row names no profile prompt (an 'id' or 'prompt' is required)")
            prompt = profile.find(str(key))
            if prompt is None:
                raise ValueError(f"id: {str(key)[:60]!r} is not a prompt of the profile set")
            if _value(raw, "error") is not None and _value(raw, "quality") is None \
                    and _value(raw, "completion_tokens") is None:
                parsed.skipped += 1  # the call failed: nothing was learned about the model
                continue
            parsed.outcomes[prompt.id] = (prompt, _outcome(raw))
        except (ValueError, TypeError) as exc:
            parsed.errors[number] = str(exc)
    return parsed


def onboard(model: str, results: ProfileResults, history: ChromaHistory, embedder: Embedder,
            store_prompts: bool = False) -> OnboardReport:
    """Write a model's profile outcomes into history (idempotent).

    A profile prompt already in history gets the outcome merged into its record; one that is not (a profile set
    built from other history) is embedded and added as a record of its own.

    Args:
        model: the model profile (the ``model`` of the deployments that serve it).
        results: parsed by :func:`read_results` (must have no errors).
        history: the store to write to.
        embedder: embeds profile prompts missing from history.
        store_prompts: keep the texts of added records.

    Returns:
        What was written.

    Raises:
        ValueError: ``model`` is empty or ``results`` has errors (nothing is written).
    """
    if not model.strip():
        raise ValueError("model: give the model name the deployments use")
    if results.errors:
        raise ValueError(f"results: {len(results.errors)} invalid row(s); nothing onboarded")
    existing = history.existing_ids(list(results.outcomes))
    for record_id in existing:
        history.update_outcome(record_id, model, results.outcomes[record_id][1])
    new = [pair for record_id, pair in results.outcomes.items() if record_id not in existing]
    if new:
        vectors = embedder.embed([prompt.prompt for prompt, _ in new])
        history.upsert([
            HistoryRecord(id=prompt.id, embedding=vector, text=prompt.prompt if store_prompts else None,
                          task=prompt.task, outcomes={model: outcome})
            for (prompt, outcome), vector in zip(new, vectors, strict=True)
        ])
    scored = sum(1 for _, outcome in results.outcomes.values() if outcome.quality is not None)
    return OnboardReport(model, len(existing), len(new), scored, results.skipped)
