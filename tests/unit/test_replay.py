"""The replay upstream: recorded answers and usage, and the OpenAI-compatible HTTP surface."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import httpx
import pytest

from llm_router_plugin.dataset import read_data
from llm_router_plugin.pricing import Price
from llm_router_plugin.replay import ReplayBook, ReplayServer

PROMPT = "Which gas do plants absorb? " * 10  # 280 characters: 70 estimated tokens
PRICES = {"alpha": Price(1.0, 2.0), "beta": Price(0.5, 0.5)}


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> ReplayBook:
    path = tmp_path_factory.mktemp("replay") / "data.csv"
    rows = [
        # alpha: 70 prompt tokens at $1/M + 50 completion tokens at $2/M; beta records its own token counts.
        {"prompt": PROMPT, "eval_name": "qa", "split": "test", "sample_id": "1", "alpha": "1", "alpha|total_cost":
         "0.00017", "alpha|response": "Carbon dioxide.", "beta": "0", "beta|total_cost": "0.001",
         "beta|prompt_tokens": "64", "beta|completion_tokens": "9"},
        {"prompt": "Name a prime number.", "eval_name": "qa", "split": "test", "sample_id": "2", "alpha": "1",
         "alpha|total_cost": "", "alpha|response": "", "beta": "0.5", "beta|total_cost": "",
         "beta|prompt_tokens": "", "beta|completion_tokens": ""},
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return ReplayBook(read_data(path), PRICES)


@pytest.fixture(scope="module")
def server(book: ReplayBook) -> Iterator[ReplayServer]:
    replay = ReplayServer(book, port=0).start()
    try:
        yield replay
    finally:
        replay.stop()


def ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]


def test_a_recorded_answer_comes_back_with_usage_derived_from_its_cost(book: ReplayBook) -> None:
    reply = book.reply("alpha", ask(PROMPT))
    assert reply.text == "Carbon dioxide."
    assert reply.recorded
    # The usage counts the whole request (system message too); completion tokens follow from cost and price.
    assert reply.prompt_tokens == (len("Be brief.\n" + PROMPT) + 3) // 4
    assert reply.completion_tokens == round((0.00017 - reply.prompt_tokens * 1e-6) / 2e-6)


def test_recorded_token_counts_win_over_estimates(book: ReplayBook) -> None:
    reply = book.reply("beta", ask(PROMPT))
    assert (reply.prompt_tokens, reply.completion_tokens) == (64, 9)
    assert "beta" in reply.text and "quality 0" in reply.text


def test_without_cost_or_answer_text_the_placeholder_is_counted(book: ReplayBook) -> None:
    reply = book.reply("alpha", ask("Name a prime number."))
    assert reply.recorded and "alpha" in reply.text
    assert reply.completion_tokens == (len(reply.text) + 3) // 4


def test_unknown_prompts_and_models_get_a_deterministic_answer(book: ReplayBook) -> None:
    first, again = book.reply("alpha", ask("Something new")), book.reply("alpha", ask("Something new"))
    assert first == again and not first.recorded
    assert book.reply("beta", ask("Something new")).text != first.text
    assert not book.reply("gamma", ask(PROMPT)).recorded


def test_chat_completion_over_http(server: ReplayServer) -> None:
    response = httpx.post(f"{server.url}/chat/completions", json={"model": "alpha", "messages": ask(PROMPT)})
    body = response.json()
    assert response.status_code == 200 and body["object"] == "chat.completion" and body["model"] == "alpha"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Carbon dioxide."}
    reply = server.book.reply("alpha", ask(PROMPT))
    assert body["usage"] == {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                             "total_tokens": reply.prompt_tokens + reply.completion_tokens}


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_chat_completion_over_http(server: ReplayServer, include_usage: bool) -> None:
    request = {"model": "beta", "messages": ask(PROMPT), "stream": True,
               "stream_options": {"include_usage": include_usage}}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=request) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    reply = server.book.reply("beta", ask(PROMPT))
    assert text == reply.text
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage == ([reply.usage()] if include_usage else [])


def test_models_are_listed(server: ReplayServer) -> None:
    assert [m["id"] for m in httpx.get(f"{server.url}/models").json()["data"]] == ["alpha", "beta"]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/chat/completions", b"{not json", 400, "not JSON"),
    ("/v1/chat/completions", b'{"model": "alpha"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    ("/v1/embeddings", b"{}", 404, "no route"),
])
def test_bad_requests_get_openai_style_errors(
    server: ReplayServer, path: str, body: bytes, status: int, message: str
) -> None:
    base = server.url.removesuffix("/v1")
    response = httpx.post(f"{base}{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_port_out_of_range_is_refused(book: ReplayBook) -> None:
    with pytest.raises(ValueError, match="port"):
        ReplayServer(book, port=70000)
