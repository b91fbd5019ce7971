"""`profile run`: a model's answers on a profile set, from a replay endpoint, scored, resumable, with clear failures."""

from __future__ import annotations

import csv
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_router_plugin.cli import app
from llm_router_plugin.dataset import read_data
from llm_router_plugin.pricing import Price
from llm_router_plugin.profile_run import (
    RESULT_FIELDS,
    CallableScorer,
    ChatEndpoint,
    JudgeScorer,
    ReferenceScorer,
    check_base_url,
    load_scorer,
    make_scorer,
    parse_grade,
    read_results,
    run_profile,
)
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet
from llm_router_plugin.replay import ReplayBook, ReplayServer

runner = CliRunner()
MODEL = "alpha"
# Per prompt: (text, quality of alpha or "" if unknown, prompt tokens, completion tokens, answer, reference).
ROWS = [
    ("What is 2 + 2?", "1", 12, 3, "The answer is 4.", "4"),
    ("Name the capital of France.", "1", 14, 5, "Paris.", "Paris"),
    ("Which gas do plants absorb?", "0", 15, 6, "Oxygen.", "carbon dioxide"),
    ("Write a haiku about rain.", "", 16, 20, "Rain taps the window", None),
    ("Spell 'cat' backwards.", "0.5", 17, 4, "tac", "tac"),
]
QUALITY = {text: float(q) if q else None for text, q, *_ in ROWS}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile_run") / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "eval_name", "split", "sample_id", MODEL, f"{MODEL}|total_cost",
                         f"{MODEL}|prompt_tokens", f"{MODEL}|completion_tokens", f"{MODEL}|response"])
        for i, (text, quality, prompt_tokens, completion_tokens, answer, _) in enumerate(ROWS):
            writer.writerow([text, "qa", "test", i, quality, "", prompt_tokens, completion_tokens, answer])
    return path


@pytest.fixture(scope="module")
def replay(data_file: Path) -> Iterator[ReplayServer]:
    server = ReplayServer(ReplayBook(read_data(data_file)), port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def profile(tmp_path: Path) -> ProfileSet:
    prompts = tuple(ProfilePrompt(id=f"p{i}", prompt=text, task="qa", cluster=i % 2, reference=reference)
                    for i, (text, *_, reference) in enumerate(ROWS))
    return ProfileSet(prompts, np.eye(2, 8, dtype=np.float32), "hashing-64")


@pytest.fixture
def profile_file(tmp_path: Path, profile: ProfileSet) -> Path:
    path = tmp_path / "profile.jsonl"
    profile.save(path)
    return path


@pytest.fixture
def endpoint(replay: ReplayServer) -> Iterator[ChatEndpoint]:
    with ChatEndpoint(replay.url, backoff_s=0) as chat:
        yield chat


def data_quality(prompt: ProfilePrompt, answer: str) -> float | None:
    """A scorer supplied by the test: the quality the data file records for the prompt."""
    return QUALITY[prompt.prompt]


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    lines = read_results(path)
    assert len({line["id"] for line in lines}) == len(lines), "a prompt has more than one line"
    return {line["id"]: line for line in lines}


# ---- a stub endpoint for failures, costs, keys and judges ---------------------------------------------------------

Respond = Callable[[dict[str, Any], int], tuple[int, dict[str, Any], dict[str, str]]]


class StubServer(ThreadingHTTPServer):
    """Answers each chat request with ``respond(body, attempt)``; ``attempt`` counts requests for the same prompt."""

    daemon_threads = True

    def __init__(self, respond: Respond) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.respond = respond
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _StubHandler(BaseHTTPRequestHandler):
    server: StubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            attempt = sum(b["messages"] == body["messages"] for b, _ in self.server.requests)
            self.server.requests.append((body, dict(self.headers)))
        status, payload, headers = self.server.respond(body, attempt)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def chat(text: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 2}}


@pytest.fixture
def stub() -> Iterator[Callable[[Respond], StubServer]]:
    servers: list[StubServer] = []

    def start(respond: Respond) -> StubServer:
        server = StubServer(respond)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---- answers, usage, costs, scores --------------------------------------------------------------------------------


def test_every_prompt_is_answered_with_the_usage_tokens(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "out" / "alpha.jsonl"
    summary = run_profile(profile, out, endpoint, MODEL)
    assert (summary.answered, summary.failed, summary.skipped) == (5, 0, 0)
    lines = by_id(out)
    assert set(lines) == {f"p{i}" for i in range(5)}
    for i, (text, _, prompt_tokens, completion_tokens, answer, _) in enumerate(ROWS):
        line = lines[f"p{i}"]
        assert list(line) == list(RESULT_FIELDS)
        assert (line["prompt"], line["model"], line["answer"]) == (text, MODEL, answer)
        assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt_tokens, completion_tokens)
        assert line["cost_usd"] is None  # no price and no reported cost: unknown, not zero
        assert line["error"] is None and line["latency_s"] >= 0


def test_cost_comes_from_the_price_times_the_usage(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "alpha.jsonl"
    summary = run_profile(profile, out, endpoint, MODEL, price=Price(1.0, 2.0), scorer=None)
    lines = by_id(out)
    for i, (_, _, prompt_tokens, completion_tokens, *_) in enumerate(ROWS):
        assert lines[f"p{i}"]["cost_usd"] == pytest.approx((prompt_tokens * 1.0 + completion_tokens * 2.0) / 1e6)
        assert lines[f"p{i}"]["quality"] is None
    assert summary.cost_usd == pytest.approx(sum(p * 1.0 + c * 2.0 for _, _, p, c, *_ in ROWS) / 1e6)
    assert summary.scored == 0


def test_a_reported_cost_wins_and_missing_usage_stays_null(
    tmp_path: Path, profile: ProfileSet, stub: Callable[[Respond], StubServer]
) -> None:
    def respond(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any], dict[str, str]]:
        if "2 + 2" in body["messages"][0]["content"]:
            return 200, chat("4", usage={}), {}
        return 200, chat("ok"), {"x-litellm-response-cost": "0.0125"}

    server = stub(respond)
    out = tmp_path / "alpha.jsonl"
    with ChatEndpoint(server.url) as endpoint:
        run_profile(profile, out, endpoint, MODEL, price=Price(1.0, 2.0), limit=2)
    lines = by_id(out)
    assert lines["p0"]["cost_usd"] is None  # no usage: the price has nothing to multiply
    assert (lines["p0"]["prompt_tokens"], lines["p0"]["completion_tokens"]) == (None, None)
    assert lines["p1"]["cost_usd"] == 0.0125
    sent = server.requests[0][0]
    assert sent["temperature"] == 0 and sent["model"] == MODEL and "max_tokens" not in sent


def test_a_supplied_scorer_gives_the_qualities_and_missing_scores_stay_null(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "alpha.jsonl"
    summary = run_profile(profile, out, endpoint, MODEL, scorer=CallableScorer(data_quality, "data"))
    lines = by_id(out)
    assert {i: line["quality"] for i, line in lines.items()} == {"p0": 1.0, "p1": 1.0, "p2": 0.0, "p3": None,
                                                                 "p4": 0.5}
    assert lines["p3"]["score_error"] is None and lines["p3"]["answer"] == "Rain taps the window"
    assert (summary.answered, summary.scored) == (5, 4)


@pytest.mark.parametrize("result", [1.5, -0.1, float("nan"), float("inf"), "0.5", True, ZeroDivisionError("boom")])
def test_a_misbehaving_scorer_leaves_the_quality_null_and_keeps_the_answer(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint, result: Any
) -> None:
    def scorer(prompt: ProfilePrompt, answer: str) -> Any:
        if isinstance(result, Exception):
            raise result
        return result

    out = tmp_path / "alpha.jsonl"
    summary = run_profile(profile, out, endpoint, MODEL, scorer=CallableScorer(scorer, "bad"), limit=2)
    assert (summary.answered, summary.scored) == (2, 0)
    for line in by_id(out).values():
        assert line["quality"] is None and line["answer"] and line["error"] is None
        reason = line["score_error"]
        assert reason and ("boom" in reason or "not a number in [0, 1]" in reason)


def test_the_reference_scorer(profile: ProfileSet) -> None:
    scorer = ReferenceScorer()
    p0, p1, p2, p3, _ = profile.prompts
    assert scorer.score(p0, "The answer is 4.") == 1.0
    assert scorer.score(p0, "The answer is 42.") == 0.0  # whole words only
    assert scorer.score(p1, "  PARIS! ") == 1.0
    assert scorer.score(p2, "Carbon-dioxide, mostly.") == 1.0
    assert scorer.score(p2, "Oxygen.") == 0.0
    assert scorer.score(p3, "anything") is None  # no reference: no score


def test_the_reference_scorer_is_the_default_on_the_replay_endpoint(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "alpha.jsonl"
    run_profile(profile, out, endpoint, MODEL, scorer=make_scorer(None, endpoint))
    assert {i: line["quality"] for i, line in by_id(out).items()} == {"p0": 1.0, "p1": 1.0, "p2": 0.0, "p3": None,
                                                                     "p4": 1.0}


@pytest.mark.parametrize(("reply", "grade"), [("7", 0.7), ("Grade: 8/10", 0.8), ("10.", 1.0), ("0", 0.0),
                                              ("I'd say 6.5 out of 10", 0.65), ("eleven", None), ("12", None),
                                              ("-3", None), ("", None)])
def test_judge_grades_are_parsed(reply: str, grade: float | None) -> None:
    assert parse_grade(reply) == (pytest.approx(grade) if grade is not None else None)


def test_the_judge_scorer_asks_the_judge_with_the_reference(
    profile: ProfileSet, stub: Callable[[Respond], StubServer]
) -> None:
    def respond(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any], dict[str, str]]:
        if body["model"] == "judge":
            return 200, chat("Grade: 7"), {}
        return 404, {"error": {"message": f"no model {body['model']}"}}, {}

    server = stub(respond)
    with ChatEndpoint(server.url, backoff_s=0) as endpoint:
        scorer = make_scorer("judge", endpoint, "judge")
        assert isinstance(scorer, JudgeScorer)
        assert scorer.score(profile.prompts[2], "Oxygen.") == pytest.approx(0.7)
        question = server.requests[-1][0]["messages"][0]["content"]
        assert "Which gas do plants absorb?" in question and "carbon dioxide" in question and "Oxygen." in question
        assert JudgeScorer(endpoint, "missing-judge").score(profile.prompts[2], "Oxygen.") is None


# ---- retries, failures, resuming ----------------------------------------------------------------------------------


def test_transient_503_and_429_are_retried(
    tmp_path: Path, profile: ProfileSet, stub: Callable[[Respond], StubServer]
) -> None:
    def respond(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any], dict[str, str]]:
        if attempt == 0:
            return 503, {"error": {"message": "overloaded"}}, {}
        if attempt == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        return 200, chat("fine"), {}

    server = stub(respond)
    out = tmp_path / "alpha.jsonl"
    with ChatEndpoint(server.url, retries=2, backoff_s=0) as endpoint:
        summary = run_profile(profile, out, endpoint, MODEL)
    assert (summary.answered, summary.failed) == (5, 0)
    assert all(line["answer"] == "fine" for line in by_id(out).values())
    assert len(server.requests) == 3 * 5


def test_retries_are_bounded_and_client_errors_are_not_retried(
    tmp_path: Path, profile: ProfileSet, stub: Callable[[Respond], StubServer]
) -> None:
    def respond(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any], dict[str, str]]:
        if "2 + 2" in body["messages"][0]["content"]:
            return 400, {"error": {"message": "context too long"}}, {}
        return 500, {"error": {"message": "internal"}}, {}

    server = stub(respond)
    out = tmp_path / "alpha.jsonl"
    with ChatEndpoint(server.url, retries=1, backoff_s=0) as endpoint:
        summary = run_profile(profile, out, endpoint, MODEL, limit=2)
    lines = by_id(out)
    assert (summary.answered, summary.failed) == (0, 2)
    assert "HTTP 400" in lines["p0"]["error"] and "context too long" in lines["p0"]["error"]
    assert "HTTP 500" in lines["p1"]["error"] and "2 attempt(s)" in lines["p1"]["error"]
    assert len(server.requests) == 1 + 2


def test_an_unreachable_endpoint_fails_each_prompt_clearly(tmp_path: Path, profile: ProfileSet) -> None:
    out = tmp_path / "alpha.jsonl"
    with ChatEndpoint(closed_port_url(), retries=1, backoff_s=0) as endpoint:
        summary = run_profile(profile, out, endpoint, MODEL, scorer=ReferenceScorer())
    assert (summary.answered, summary.failed, summary.scored) == (0, 5, 0)
    assert summary.first_error is not None and "cannot reach" in summary.first_error
    for line in by_id(out).values():
        assert line["answer"] is None and line["quality"] is None and line["cost_usd"] is None
        assert line["error"].startswith("cannot reach http://127.0.0.1:")


def test_a_rerun_resumes_after_an_interrupted_write_and_retries_failures(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "alpha.jsonl"
    run_profile(profile, out, endpoint, MODEL, limit=3)
    before = out.read_text().splitlines()
    failed = {field: None for field in RESULT_FIELDS} | {"id": "p3", "prompt": ROWS[3][0], "model": MODEL,
                                                         "error": "HTTP 503"}
    with out.open("a") as fh:  # a failed call, then a write cut short by a kill
        fh.write(json.dumps(failed) + "\n" + '{"id": "p4", "prompt": "Spell')
    summary = run_profile(profile, out, endpoint, MODEL)
    assert (summary.skipped, summary.answered, summary.failed) == (3, 2, 0)
    text = out.read_text()
    assert text.splitlines()[:3] == before and text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line is whole again
    assert sorted(line["id"] for line in lines) == [f"p{i}" for i in range(5)]
    assert all(line["error"] is None for line in lines)
    again = run_profile(profile, out, endpoint, MODEL)
    assert (again.skipped, again.answered) == (5, 0) and out.read_text() == text


def test_a_results_file_of_another_model_or_with_a_corrupt_line_is_refused(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint
) -> None:
    out = tmp_path / "alpha.jsonl"
    run_profile(profile, out, endpoint, MODEL, limit=1)
    with pytest.raises(ValueError, match="not 'beta'; use one file per model"):
        run_profile(profile, out, endpoint, "beta")
    out.write_text("not json\n" + out.read_text())
    with pytest.raises(ValueError, match="line 1 is not a results line"):
        run_profile(profile, out, endpoint, MODEL)
    with pytest.raises(ValueError, match=r"^out: cannot read"):
        run_profile(profile, tmp_path, endpoint, MODEL)


@pytest.mark.parametrize(("argument", "value"), [("concurrency", 0), ("concurrency", 10_000), ("limit", -1),
                                                 ("limit", 0), ("max_tokens", 0), ("model", " ")])
def test_bad_run_arguments_are_named(
    tmp_path: Path, profile: ProfileSet, endpoint: ChatEndpoint, argument: str, value: Any
) -> None:
    arguments: dict[str, Any] = {"model": MODEL, argument: value}
    with pytest.raises(ValueError, match=f"^{argument}: "):
        run_profile(profile, tmp_path / "out.jsonl", endpoint, **arguments)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("url", ["", "localhost:4000", "ftp://host/v1", "http://", "not a url"])
def test_bad_base_urls_are_named(url: str) -> None:
    with pytest.raises(ValueError, match=r"^base_url: "):
        check_base_url(url)


def test_user_scorers_load_by_module_and_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_scoring.py").write_text("def score(prompt, answer):\n    return 0.25\nnot_callable = 3\n")
    (tmp_path / "broken_scoring.py").write_text("raise RuntimeError('cannot start')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = load_scorer("my_scoring:score")
    assert scorer.score(ProfilePrompt(id="x", prompt="q", cluster=0), "a") == 0.25
    for spec, message in [("no_such_module_xyz:score", "cannot import module"), ("my_scoring:nope", "no function"),
                          ("my_scoring:not_callable", "not callable"), ("broken_scoring:score", "cannot start"),
                          ("my_scoring", "expected 'reference'"), ("bogus", "expected 'reference'")]:
        with pytest.raises(ValueError, match=f"^scorer: .*{message}"):
            load_scorer(spec)


# ---- the command line ---------------------------------------------------------------------------------------------


def test_cli_run_with_prices_file_and_a_user_scorer(
    tmp_path: Path, profile_file: Path, replay: ReplayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({MODEL: {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}))
    (tmp_path / "cli_scoring.py").write_text("def half(prompt, answer):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)  # module:function scorers are found in the working folder
    out = tmp_path / "alpha.jsonl"
    args = ["profile", "run", "--base-url", replay.url, "--model", MODEL, "--profile", str(profile_file),
            "--out", str(out), "--prices", str(prices), "--scorer", "cli_scoring:half", "--concurrency", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "answered 5, failed 0, scored 5, skipped 0" in result.output
    lines = by_id(out)
    assert all(line["quality"] == 0.5 for line in lines.values())
    assert lines["p0"]["cost_usd"] == pytest.approx((12 + 3 * 2) / 1e6)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "answered 0, failed 0, scored 0, skipped 5" in again.output


def test_cli_sends_the_key_from_the_named_variable(
    tmp_path: Path, profile_file: Path, stub: Callable[[Respond], StubServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stub(lambda body, attempt: (200, chat("ok"), {}))
    monkeypatch.setenv("PROFILE_TEST_KEY", "sk-test-123")
    result = runner.invoke(app, ["profile", "run", "--base-url", server.url, "--model", MODEL, "--profile",
                                 str(profile_file), "--out", str(tmp_path / "o.jsonl"), "--api-key-env",
                                 "PROFILE_TEST_KEY", "--limit", "1", "--max-tokens", "64"])
    assert result.exit_code == 0, result.output
    body, headers = server.requests[0]
    assert headers["Authorization"] == "Bearer sk-test-123" and body["max_tokens"] == 64
    assert "sk-test-123" not in (tmp_path / "o.jsonl").read_text()


def test_cli_unreachable_endpoint_reports_failures_with_a_nonzero_exit(tmp_path: Path, profile_file: Path) -> None:
    result = runner.invoke(app, ["profile", "run", "--base-url", closed_port_url(), "--model", MODEL, "--profile",
                                 str(profile_file), "--out", str(tmp_path / "o.jsonl"), "--retries", "0"])
    assert result.exit_code == 1
    assert "answered 0, failed 5" in result.output
    assert "error: 5 call(s) failed, first: cannot reach http://127.0.0.1:" in result.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--concurrency", "0"], "--concurrency"),
    (["--limit", "-3"], "--limit"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--scorer", "no_such_module_xyz:score"], "error: scorer: cannot import module 'no_such_module_xyz'"),
    (["--scorer", "json:no_such_function"], "error: scorer: module 'json' has no function 'no_such_function'"),
    (["--scorer", "best"], "error: scorer: expected 'reference', 'judge', 'none' or module:function"),
    (["--scorer", "judge"], "error: judge_model: the judge scorer needs"),
    (["--judge-model", "j"], "error: judge_model: only used with the judge scorer"),
    (["--api-key-env", "PROFILE_TEST_UNSET_VARIABLE"], "error: api_key_env: environment variable "
                                                       "'PROFILE_TEST_UNSET_VARIABLE' is not set"),
    (["--input-usd-per-mtok", "1"], "error: input_usd_per_mtok/output_usd_per_mtok: give both"),
    (["--input-usd-per-mtok", "-1", "--output-usd-per-mtok", "1"], "--input-usd-per-mtok"),
])
def test_cli_rejects_bad_options_naming_them(
    tmp_path: Path, profile_file: Path, replay: ReplayServer, extra: list[str], message: str
) -> None:
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["profile", "run", "--base-url", replay.url, "--model", MODEL, "--profile",
                                 str(profile_file), "--out", str(out), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_cli_rejects_a_bad_url_a_bad_profile_and_an_unpriced_model(
    tmp_path: Path, profile_file: Path, replay: ReplayServer
) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"profile_set": 1, "embedding_model": "x", "centres": [[1.0]]}\n{"id": "a"}\n')
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"other": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}))
    base = ["profile", "run", "--model", MODEL, "--out", str(tmp_path / "o.jsonl")]
    cases = [
        (["--base-url", "localhost:4000", "--profile", str(profile_file)], "error: base_url: must be an http(s) URL"),
        (["--base-url", replay.url, "--profile", str(tmp_path / "missing.jsonl")], "error: profile_set: no such file"),
        (["--base-url", replay.url, "--profile", str(broken)], f"error: profile_set: {broken} line 2: prompt"),
        (["--base-url", replay.url, "--profile", str(profile_file), "--prices", str(prices)],
         "error: prices: " + str(prices) + " has no price for model 'alpha'"),
        (["--base-url", replay.url, "--profile", str(profile_file), "--out", str(profile_file)],
         "error: out: must not be the profile set file"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert result.output.count("error:") == 1
