"""Collect a model's answers on a profile set: the first step of onboarding a model the history does not know.

Every profile prompt is sent as one user message (temperature 0) to ``{base_url}/chat/completions`` of any
OpenAI-compatible endpoint (a LiteLLM proxy, the replay server, a provider), a few at a time. Each answer is scored
by a pluggable :class:`Scorer` and written at once as one JSON line of the results file (see :data:`RESULT_FIELDS`),
which ``llm-router onboard`` imports.

The results file makes a run resumable: a rerun with the same file skips the prompts that already have an answer and
retries the ones whose call failed (their old lines are dropped, so each prompt has at most one line). A last line
cut short by an interrupted write is dropped too. Values the endpoint did not report (tokens, cost) and scores the
scorer did not give stay ``null``: nothing is made up.

Only ``httpx`` talks to the endpoint: the router's core takes no LLM client dependency.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from llm_router_plugin._files import private_dir, private_file
from llm_router_plugin.errors import RouterError
from llm_router_plugin.pricing import Price
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet
from llm_router_plugin.validation import optional_token_count

logger = logging.getLogger(__name__)

#: The keys of every results line, in this order. ``answer`` is ``null`` when the call failed (then ``error`` says
#: why); ``quality`` is the score in [0, 1] or ``null`` (then ``score_error`` says why if the scorer failed);
#: ``prompt_tokens``/``completion_tokens`` are the response's ``usage``; ``cost_usd`` is the endpoint's reported cost
#: (header ``x-litellm-response-cost``), else the given price times the tokens; ``latency_s`` is the seconds of the
#: call that answered.
RESULT_FIELDS = ("id", "prompt", "model", "answer", "quality", "prompt_tokens", "completion_tokens", "cost_usd",
                 "latency_s", "error", "score_error")
#: Response header a LiteLLM proxy reports a call's cost in (USD).
COST_HEADER = "x-litellm-response-cost"
#: The most prompts sent at once (more would only get an endpoint's rate limit answers).
MAX_CONCURRENCY = 256
#: The longest wait between attempts, whatever the endpoint's ``Retry-After`` asks.
MAX_BACKOFF_S = 60.0

JUDGE_PROMPT = """You are grading an answer to a question.

Question:
{question}
{reference}
Answer to grade:
{answer}

Rate the answer's correctness and quality on a scale from 0 (wrong or useless) to 10 (fully correct and complete).
Reply with the number only."""


class ChatCallError(RouterError):
    """A chat call failed: unreachable endpoint, HTTP error, or a response without an answer (the message says)."""


@dataclass(frozen=True)
class Completion:
    """One answered chat call.

    Attributes:
        answer: the answer text.
        prompt_tokens: ``usage.prompt_tokens``, if the response reports a valid one.
        completion_tokens: ``usage.completion_tokens``, likewise.
        cost_usd: the cost the endpoint reported in :data:`COST_HEADER`, if any.
        latency_s: seconds of the attempt that answered.
    """

    answer: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_s: float


class ChatEndpoint:
    """An OpenAI-compatible chat endpoint, with a per-request timeout and a bounded retry.

    429s, 5xx answers and connection errors (timeouts included) are retried ``retries`` times, waiting
    ``backoff_s`` × 2^attempt (or the endpoint's ``Retry-After``, at most :data:`MAX_BACKOFF_S`) in between; other
    HTTP errors are not, since the same request would fail again. Safe to share between threads.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:4000/v1`` (``/chat/completions`` is appended).
        api_key: sent as ``Authorization: Bearer …`` if given.
        timeout_s: seconds one request may take.
        retries: further attempts after a retryable failure.
        backoff_s: the first wait between attempts.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL, or a number is out of range (the message names it).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 120.0, retries: int = 3,
                 backoff_s: float = 1.0) -> None:
        self.url = check_base_url(base_url) + "/chat/completions"
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s: must be a positive number of seconds, got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValueError(f"retries: must be a whole number in [0, 10], got {retries!r}")
        if not (math.isfinite(backoff_s) and backoff_s >= 0):
            raise ValueError(f"backoff_s: must be a non-negative number of seconds, got {backoff_s!r}")
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def __enter__(self) -> ChatEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def complete(self, model: str, prompt: str, *, max_tokens: int | None = None,
                 stop: threading.Event | None = None) -> Completion:
        """Ask ``model`` one user message at temperature 0.

        Args:
            model: the model (deployment) name the endpoint serves.
            prompt: the user message.
            max_tokens: the completion limit, if any.
            stop: set it to give up before the next attempt (an interrupted run).

        Returns:
            The answer, its usage and cost.

        Raises:
            ChatCallError: every attempt failed, the failure is not retryable, or the response has no answer text.
        """
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        problem = "not attempted"
        for attempt in range(self.retries + 1):
            if stop is not None and stop.is_set():
                raise ChatCallError("stopped before the call was made")
            start = time.perf_counter()
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem, wait_s = f"no answer from {self.url} within {self._client.timeout.read} s", None
            except httpx.HTTPError as exc:  # connection refused, DNS, reset, protocol errors
                problem, wait_s = f"cannot reach {self.url}: {exc or type(exc).__name__}", None
            else:
                if response.is_success:
                    return _completion(response, time.perf_counter() - start)
                problem = f"HTTP {response.status_code} from {self.url}: {_error_message(response)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ChatCallError(problem)
                wait_s = _retry_after(response)
            if attempt < self.retries:
                pause = min(MAX_BACKOFF_S, wait_s if wait_s is not None else self.backoff_s * 2**attempt)
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
        raise ChatCallError(f"{problem} (after {self.retries + 1} attempt(s))")


def check_base_url(base_url: str) -> str:
    """An OpenAI-compatible API root, without its trailing slash.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL with a host.
    """
    example = "an http(s) URL such as http://127.0.0.1:4000/v1"
    try:
        url = httpx.URL(base_url.strip())
    except (httpx.InvalidURL, TypeError, AttributeError):
        raise ValueError(f"base_url: must be {example}, got {base_url!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url: must be {example}, got {base_url!r}")
    return str(url).rstrip("/")


def _completion(response: httpx.Response, latency_s: float) -> Completion:
    try:
        body = response.json()
        answer = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ChatCallError("the response is not a chat completion (no choices[0].message.content)") from None
    if not isinstance(answer, str):
        raise ChatCallError("the response has no answer text (choices[0].message.content is not a string)")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(answer, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                      _header_cost(response.headers.get(COST_HEADER)), latency_s)


def _count(value: Any) -> int | None:
    # A usage field that is not a whole non-negative number is not reported: null, not a guess.
    try:
        return optional_token_count("usage", value)
    except ValueError:
        return None


def _header_cost(value: str | None) -> float | None:
    try:
        cost = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: use the exponential backoff
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    text = str(message) if message else response.text or response.reason_phrase
    return " ".join(text.split())[:300]


# ---- scorers ------------------------------------------------------------------------------------------------------


@runtime_checkable
class Scorer(Protocol):
    """Scores an answer to a profile prompt in [0, 1]; ``None`` when it cannot tell.

    Called from several threads at once. A score outside [0, 1], a non-number or an exception is recorded as no
    score (``quality: null``), with the reason in ``score_error``.
    """

    def score(self, prompt: ProfilePrompt, answer: str) -> float | None:
        """The answer's quality in [0, 1], or ``None``."""
        ...


def normalise(text: str) -> str:
    """Lower case, punctuation as spaces, whitespace collapsed: ``"The  Answer: B."`` → ``"the answer b"``."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class ReferenceScorer:
    """1.0 if the answer matches the prompt's reference answer, else 0.0; ``None`` for a prompt without reference.

    Both are :func:`normalise`-d; the answer matches if it equals the reference or contains it as whole words
    (``"42"`` matches ``"the answer is 42."`` but not ``"420"``).
    """

    def score(self, prompt: ProfilePrompt, answer: str) -> float | None:
        """See the class docstring."""
        if prompt.reference is None or not normalise(prompt.reference):
            return None
        reference, said = normalise(prompt.reference), normalise(answer)
        return 1.0 if reference == said or f" {reference} " in f" {said} " else 0.0


class JudgeScorer:
    """An LLM judge grades the answer 0–10 against the question (and the reference answer, if any); score = grade/10.

    Args:
        endpoint: where the judge is served (usually the endpoint being profiled).
        model: the judge's model (deployment) name.
        max_tokens: the judge's completion limit, if any.
    """

    def __init__(self, endpoint: ChatEndpoint, model: str, max_tokens: int | None = None) -> None:
        if not model.strip():
            raise ValueError("judge_model: a judge model name is required")
        self.endpoint = endpoint
        self.model = model
        self.max_tokens = max_tokens

    def score(self, prompt: ProfilePrompt, answer: str) -> float | None:
        """The judge's grade / 10; ``None`` if the call fails or the reply holds no grade in [0, 10]."""
        reference = f"\nReference answer:\n{prompt.reference}\n" if prompt.reference else ""
        question = JUDGE_PROMPT.format(question=prompt.prompt, reference=reference, answer=answer)
        try:
            reply = self.endpoint.complete(self.model, question, max_tokens=self.max_tokens).answer
        except ChatCallError as exc:
            logger.info("judge %s gave no grade for %s: %s", self.model, prompt.id, exc)
            return None
        return parse_grade(reply)


def parse_grade(reply: str) -> float | None:
    """The first number of a judge's reply as a score in [0, 1] (``"Grade: 7/10"`` → 0.7); ``None`` if none in [0, 10].

    Args:
        reply: the judge's answer text.

    Returns:
        The grade / 10, or ``None``.
    """
    found = re.search(r"(?<![\w.])-?\d+(?:\.\d+)?", reply)
    if found is None:
        return None
    grade = float(found.group())
    return grade / 10 if 0 <= grade <= 10 else None


class CallableScorer:
    """A plain function ``f(prompt: ProfilePrompt, answer: str) -> float | None`` as a :class:`Scorer`.

    Args:
        function: the function.
        name: its name, for messages.
    """

    def __init__(self, function: Callable[[ProfilePrompt, str], float | None], name: str) -> None:
        self.function = function
        self.name = name

    def score(self, prompt: ProfilePrompt, answer: str) -> float | None:
        """The function's score."""
        return self.function(prompt, answer)


def load_scorer(spec: str) -> CallableScorer:
    """Import a user's scoring function named ``module:function`` (``function`` may be dotted, e.g. ``Cls.method``).

    Args:
        spec: e.g. ``mypkg.scoring:score``; the module must be importable (installed, or on ``sys.path``).

    Returns:
        The function as a scorer.

    Raises:
        ValueError: the spec is not ``module:function``, the module cannot be imported, or it has no such callable.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name.strip() or not attribute.strip():
        raise ValueError(f"scorer: expected 'reference', 'judge', 'none' or module:function, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name.strip())
    except Exception as exc:  # a user module may fail to import in any way: report it, do not crash
        raise ValueError(f"scorer: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in attribute.strip().split("."):
        if not hasattr(target, part):
            raise ValueError(f"scorer: module {module_name!r} has no function {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"scorer: {spec!r} is not callable")
    return CallableScorer(target, spec)


def make_scorer(spec: str | None, endpoint: ChatEndpoint, judge_model: str | None = None) -> Scorer | None:
    """The scorer a command line names.

    Args:
        spec: ``reference``, ``judge``, ``none`` (collect answers only) or ``module:function``; ``None`` = reference.
        endpoint: where a judge is asked.
        judge_model: the judge's model name (required by, and only allowed with, ``judge``).

    Returns:
        The scorer, or ``None`` for ``none``.

    Raises:
        ValueError: an unknown scorer, a module or function that does not load, or a judge model missing or given
            without the judge scorer.
    """
    spec = (spec or "reference").strip()
    if judge_model is not None and spec != "judge":
        raise ValueError(f"judge_model: only used with the judge scorer, not with {spec!r}")
    if spec == "reference":
        return ReferenceScorer()
    if spec == "none":
        return None
    if spec == "judge":
        if not judge_model:
            raise ValueError("judge_model: the judge scorer needs the judge's model name")
        return JudgeScorer(endpoint, judge_model)
    return load_scorer(spec)


def _score(scorer: Scorer, prompt: ProfilePrompt, answer: str) -> tuple[float | None, str | None]:
    """The checked score and, if there is none because the scorer failed, why."""
    try:
        value = scorer.score(prompt, answer)
    except Exception as exc:  # a scorer bug must not lose an answer already paid for
        return None, f"scorer raised {type(exc).__name__}: {exc}"
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        return None, f"scorer returned {value!r}, not a number in [0, 1]"
    return float(value), None


# ---- the results file ---------------------------------------------------------------------------------------------


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a results file; a last line cut short by an interrupted write is left out.

    Args:
        path: the file.

    Returns:
        One dict per complete line, in file order (a prompt retried in a later run has its failed line dropped by
        that run, so each id appears at most once in a file only this module wrote).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a results line (the message names the file and line).
    """
    return _parse_results(Path(path))[0]


def _parse_results(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The complete lines, and whether the file needs repair (a cut-short last line, or no final newline)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"out: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    # Only "\n" ends a line (str.splitlines would also split at characters a JSON string may hold).
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    records: list[dict[str, Any]] = []
    repair = bool(text) and not text.endswith("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            repair = True
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            if number == len(lines):  # the write of this line was interrupted
                return records, True
            raise ValueError(f"out: {path} line {number} is not a results line; remove it or use another file")
        records.append(record)
    return records, repair


def _prepare_out(path: Path, model: str) -> set[str]:
    """Make the results file ready to append to; the ids it already holds answers for.

    Failed lines (retried now) and a cut-short last line are dropped, by rewriting the file atomically.

    Raises:
        ValueError: the file holds another model's answers, or a corrupt line that is not the last.
    """
    if not path.exists():
        try:
            private_dir(path.parent)
            private_file(path)
        except OSError as exc:
            raise ValueError(f"out: cannot create {path} ({exc.strerror or exc})") from None
        return set()
    records, repair = _parse_results(path)
    others = sorted({str(r.get("model")) for r in records if r.get("model") != model})
    if others:
        raise ValueError(f"out: {path} holds answers of {others[:3]}, not {model!r}; use one file per model")
    keep: dict[str, dict[str, Any]] = {}
    for record in records:
        if isinstance(record.get("answer"), str) and record.get("error") is None:
            keep.setdefault(record["id"], record)
    if repair or len(keep) != len(records):
        temporary = path.with_name(path.name + ".partial")
        temporary.unlink(missing_ok=True)
        private_file(temporary)
        temporary.write_text("".join(json.dumps(r) + "\n" for r in keep.values()), encoding="utf-8")
        os.replace(temporary, path)
    return set(keep)


# ---- the run ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a run did.

    Attributes:
        out: the results file.
        answered: prompts answered in this run.
        failed: prompts whose call failed in this run (a rerun retries them).
        scored: answers of this run the scorer gave a score.
        skipped: prompts skipped because the file already held their answer.
        cost_usd: the known cost of this run's calls (calls of unknown cost not included).
        seconds: wall time.
        first_error: the first failure's message, if any.
    """

    out: Path
    answered: int
    failed: int
    scored: int
    skipped: int
    cost_usd: float
    seconds: float
    first_error: str | None = None


def run_profile(
    prompts: ProfileSet | Sequence[ProfilePrompt], out: str | Path, endpoint: ChatEndpoint, model: str, *,
    scorer: Scorer | None = None, price: Price | None = None, max_tokens: int | None = None, concurrency: int = 4,
    limit: int | None = None, progress: bool = False,
) -> RunSummary:
    """Ask ``model`` every profile prompt not yet answered in ``out``, score the answers, append one line each.

    Args:
        prompts: the profile set (or its prompts).
        out: the results file (JSONL, see :data:`RESULT_FIELDS`); created if missing, resumed if not.
        endpoint: the OpenAI-compatible endpoint serving ``model``.
        model: the model (deployment) name to ask.
        scorer: scores each answer (``None``: every quality is ``null``).
        price: the model's price, for the cost of calls whose endpoint reports none.
        max_tokens: the completion limit per call, if any.
        concurrency: calls in flight at once, in [1, :data:`MAX_CONCURRENCY`].
        limit: only the first ``limit`` prompts of the set (a trial run), at least 1.
        progress: show a progress bar.

    Returns:
        The summary. Failed calls are recorded (``error``) and counted, never raised.

    Raises:
        ValueError: a bad argument (the message names it), or an ``out`` file holding another model's answers or a
            corrupt line that is not its last.
    """
    items = list(prompts.prompts if isinstance(prompts, ProfileSet) else prompts)
    _check_run_arguments(model, concurrency, limit, max_tokens)
    if limit is not None:
        items = items[:limit]
    out = Path(out)
    done = _prepare_out(out, model)
    todo = [p for p in items if p.id not in done]
    start = time.perf_counter()
    stop = threading.Event()
    tally = _Tally()

    def ask(prompt: ProfilePrompt) -> dict[str, Any]:
        try:
            return answer_prompt(endpoint, model, prompt, scorer=scorer, price=price, max_tokens=max_tokens,
                                 stop=stop)
        except Exception as exc:  # one prompt's surprise must not stop the run and lose the others' answers
            record: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
            record.update(id=prompt.id, prompt=prompt.prompt, model=model, error=f"{type(exc).__name__}: {exc}")
            return record

    from tqdm import tqdm

    with out.open("a", encoding="utf-8") as sink, \
            tqdm(total=len(todo), desc=f"profiling {model}", unit="prompt", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(todo))),
                               thread_name_prefix="profile-run") as pool:

        def keep(future: Future[dict[str, Any]]) -> None:
            # One line per call, flushed at once: an interruption loses no finished call.
            record = future.result()
            sink.write(json.dumps(record, allow_nan=False) + "\n")
            sink.flush()
            tally.add(record)
            bar.update(1)
            bar.set_postfix(failed=tally.failed, refresh=False)

        pending: set[Future[dict[str, Any]]] = {pool.submit(ask, p) for p in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    pending.discard(future)  # first: a line written twice would be worse than one not written
                    keep(future)
        except KeyboardInterrupt:
            # No new calls and no more retries; the calls in flight are paid for, so their answers are kept
            # (a second Ctrl-C gives up on them).
            stop.set()
            for future in as_completed({f for f in pending if not f.cancel()}):
                keep(future)
            raise
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return RunSummary(out, tally.answered, tally.failed, tally.scored, len(items) - len(todo), tally.cost_usd,
                      time.perf_counter() - start, tally.first_error)


@dataclass
class _Tally:
    """The counts of a run's written lines."""

    answered: int = 0
    failed: int = 0
    scored: int = 0
    cost_usd: float = 0.0
    first_error: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        if record["error"] is None:
            self.answered += 1
        else:
            self.failed += 1
            self.first_error = self.first_error or record["error"]
        self.scored += record["quality"] is not None
        self.cost_usd += record["cost_usd"] or 0.0


def _check_run_arguments(model: str, concurrency: int, limit: int | None, max_tokens: int | None) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model: a model name is required")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency: must be a whole number in [1, {MAX_CONCURRENCY}], got {concurrency!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: must be a whole number of at least 1, got {limit!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens: must be a whole number of at least 1, got {max_tokens!r}")


def answer_prompt(
    endpoint: ChatEndpoint, model: str, prompt: ProfilePrompt, *, scorer: Scorer | None = None,
    price: Price | None = None, max_tokens: int | None = None, stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Ask one profile prompt and score the answer: its results line (see :data:`RESULT_FIELDS`).

    Args:
        endpoint: the endpoint.
        model: the model name.
        prompt: the profile prompt.
        scorer: scores the answer (``None``: ``quality`` is ``null``).
        price: the model's price, for a call whose endpoint reports no cost.
        max_tokens: the completion limit, if any.
        stop: set to give up before the next attempt.

    Returns:
        The line as a dict; a failed call has ``answer: null`` and the reason in ``error`` (nothing is raised).
    """
    record: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
    record.update(id=prompt.id, prompt=prompt.prompt, model=model)
    try:
        completion = endpoint.complete(model, prompt.prompt, max_tokens=max_tokens, stop=stop)
    except ChatCallError as exc:
        record["error"] = str(exc)
        return record
    record.update(answer=completion.answer, prompt_tokens=completion.prompt_tokens,
                  completion_tokens=completion.completion_tokens, cost_usd=call_cost(completion, price),
                  latency_s=round(completion.latency_s, 4))
    if scorer is not None:
        record["quality"], record["score_error"] = _score(scorer, prompt, completion.answer)
    return record


def call_cost(completion: Completion, price: Price | None) -> float | None:
    """The call's cost: what the endpoint reported, else the price times both token counts, else ``None``."""
    if completion.cost_usd is not None:
        return completion.cost_usd
    if price is None or completion.prompt_tokens is None or completion.completion_tokens is None:
        return None
    return price.cost(completion.prompt_tokens, completion.completion_tokens)


__all__ = [
    "COST_HEADER",
    "RESULT_FIELDS",
    "CallableScorer",
    "ChatCallError",
    "ChatEndpoint",
    "Completion",
    "JudgeScorer",
    "ReferenceScorer",
    "RunSummary",
    "Scorer",
    "answer_prompt",
    "call_cost",
    "check_base_url",
    "load_scorer",
    "make_scorer",
    "normalise",
    "parse_grade",
    "read_results",
    "run_profile",
]
