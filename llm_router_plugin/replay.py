"""A replay upstream: an OpenAI-compatible chat server that answers as the models of a routing data file did.

With it a whole serving stack (an LLM proxy, the router, a client) runs offline on real prompts: every model of the
file is served under its own name at ``POST /v1/chat/completions``, streamed or not. For a prompt the file holds, a
model answers with its recorded answer text (the ``M|response`` column) where there is one, else with a short
placeholder, and reports realistic usage: the row's recorded token counts where the file has them, else the prompt's
estimated tokens (about four characters a token, as the RouterBench costs were computed) and completion tokens derived
from the recorded cost and the model's price. Any other prompt gets a deterministic answer. ``GET /v1/models`` lists
the models.

Only the standard library serves: the router's core takes no web framework dependency.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llm_router_plugin.dataset import DataFile, DataRow, bundled_path, read_data
from llm_router_plugin.embedding import estimate_tokens, query_text
from llm_router_plugin.pricing import Price, completion_tokens_from_cost, read_prices

#: Prices of the RouterBench models, shipped with the package (USD per million tokens).
DEFAULT_PRICES = "routerbench_prices.json"
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODEL_PATHS = ("/v1/models", "/models")
_PIECE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Reply:
    """What a replayed model answers to one request.

    Attributes:
        text: the answer.
        prompt_tokens: prompt tokens reported in the usage.
        completion_tokens: completion tokens reported in the usage.
        recorded: whether the data file holds this prompt's outcome for this model.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    recorded: bool

    def usage(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class ReplayBook:
    """The recorded answers of a data file's models, looked up by prompt.

    A request's prompt is the text of its last user message (the data files hold single-turn prompts).

    Args:
        data: the parsed data file.
        prices: model → price, to derive completion tokens from recorded costs (models without one report their
            answer's estimated tokens).
    """

    def __init__(self, data: DataFile, prices: Mapping[str, Price] | None = None) -> None:
        self.models = list(data.models)
        self._rows: dict[str, DataRow] = {}
        for row in data.rows:
            self._rows.setdefault(row.prompt, row)
        self._prices = dict(prices or {})

    @classmethod
    def from_files(cls, data: str | Path | None = None, prices: str | Path | None = None) -> ReplayBook:
        """Load a data file and a price file.

        Args:
            data: data file in the unified schema; ``None`` = the shipped RouterBench sample.
            prices: ``{model: {"input_usd_per_mtok": …, "output_usd_per_mtok": …}}`` JSON; ``None`` = the shipped
                RouterBench prices.

        Returns:
            The book.

        Raises:
            FileNotFoundError: a file does not exist.
            ValueError: the price file is malformed.
        """
        return cls(read_data(data or bundled_path()), read_prices(prices or bundled_path(DEFAULT_PRICES)))

    def __len__(self) -> int:
        return len(self._rows)

    def reply(self, model: str, messages: Sequence[Mapping[str, Any]]) -> Reply:
        """Answer a chat request as ``model`` did.

        Args:
            model: the requested model name.
            messages: OpenAI-style chat messages.

        Returns:
            The answer and its usage; the same request always gets the same reply.
        """
        estimated = estimate_tokens(query_text(messages))
        prompt = query_text([m for m in messages if m.get("role") == "user"][-1:])
        row = self._rows.get(prompt)
        outcome = row.outcomes.get(model) if row else None
        if row is None or (outcome is None and model not in row.answers):
            digest = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()[:12]
            text = f"Replayed answer of {model}: this prompt is not in the replay data (ref {digest})."
            return Reply(text, estimated, estimate_tokens(text), recorded=False)
        quality = "unknown" if outcome is None or outcome.quality is None else f"{outcome.quality:g}"
        text = row.answers.get(model) or f"Replayed answer of {model} (no answer text recorded; quality {quality})."
        prompt_tokens = outcome.prompt_tokens if outcome and outcome.prompt_tokens is not None else estimated
        completion = self._completion_tokens(model, row, prompt_tokens)
        return Reply(text, prompt_tokens, completion if completion is not None else estimate_tokens(text), True)

    def _completion_tokens(self, model: str, row: DataRow, prompt_tokens: int) -> int | None:
        outcome = row.outcomes.get(model)
        if outcome is None:
            return None
        if outcome.completion_tokens is not None:
            return outcome.completion_tokens
        price = self._prices.get(model)
        if price is None or outcome.cost_usd is None:
            return None
        return completion_tokens_from_cost(outcome.cost_usd, prompt_tokens, price)


class ReplayServer(ThreadingHTTPServer):
    """The HTTP server: ``ReplayServer(book, port=0).start()`` serves in a background thread until :meth:`stop`.

    Args:
        book: what to answer.
        host: interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one (read it from :attr:`url`).
    """

    daemon_threads = True

    def __init__(self, book: ReplayBook, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port: must be in [0, 65535], got {port}")
        super().__init__((host, port), _Handler)
        self.book = book
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8001/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ReplayServer:
        """Serve in a daemon thread; returns the server itself."""
        self._thread = threading.Thread(target=self.serve_forever, name="replay-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def run(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then close the socket."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ReplayServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a replay run sends hundreds of requests."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in _MODEL_PATHS:
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in self.server.book.models]
            self._json(200, {"object": "list", "data": models})
        else:
            self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _CHAT_PATHS:
            self._error(404, f"no route POST {path}")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except (ValueError, UnicodeDecodeError):
            self._error(400, "the request body is not JSON")
            return
        problem = _request_problem(body)
        if problem:
            self._error(400, problem)
            return
        model = body["model"]
        reply = self.server.book.reply(model, body["messages"])
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(_chunks(model, reply, include_usage))
        else:
            self._json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": "stop"}],
                "usage": reply.usage(),
            })

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def _stream(self, events: Iterator[Mapping[str, Any]]) -> None:
        # No length is known up front: the stream ends when the connection closes, as HTTP/1.1 allows.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _request_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: a model name is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages: a non-empty list of message objects is required"
    return None


def _chunks(model: str, reply: Reply, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` events of a streamed reply: a word or so each, then the stop, then usage."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    for i, piece in enumerate(_PIECE.findall(reply.text)):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if include_usage:
        yield {**base, "choices": [], "usage": reply.usage()}


__all__ = ["DEFAULT_PRICES", "ReplayBook", "ReplayServer", "Reply"]
