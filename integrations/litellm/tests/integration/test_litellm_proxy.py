"""A real LiteLLM proxy subprocess on loopback with the example config.yaml, in front of the replay upstream.

The example config is used as shipped, except: the upstream and data folder of this test, the hashing embedder,
budgets a tenth of the example's (so that they run out during the test), a shorter warm-up, and one more model group
("capped") whose budgets cannot pay for any request.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy

from llm_router_plugin import DataFile, Router, RouterStatus, bundled_path, import_history, read_data
from llm_router_plugin.budget import Reservation
from llm_router_plugin.dataset import DataRow
from llm_router_plugin.replay import ReplayBook, ReplayServer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "litellm_proxy" / "config.yaml"
CAPPED = ["capped-a", "capped-b"]
MAX_ROUTED = 80  # routed requests the first test may send; the others use the prompts after these


@dataclass
class Stack:
    proxy: LiteLLMProxy
    headers: dict[str, str]
    adapter: LiteLLMAdapter
    prompts: list[DataRow]

    @property
    def chat(self) -> Router:
        router = self.adapter.router("chat")
        assert router is not None
        return router

    def ask(self, group: str, prompt: str, **extra: Any) -> httpx.Response:
        return httpx.post(f"{self.proxy.url}/v1/chat/completions", headers=self.headers, timeout=60,
                          json={"model": group, "messages": [{"role": "user", "content": prompt}], **extra})

    def recorded(self, decision_ids: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """The recorded outcomes of decisions, once all are recorded (events arrive just after the answers)."""
        deadline = time.monotonic() + timeout
        while True:
            logged = [self.chat.decisions.get(i) for i in decision_ids]
            if all(d is not None and d.status != "open" for d in logged) or time.monotonic() > deadline:
                assert all(d is not None and d.status == "recorded" for d in logged), [d and d.status for d in logged]
                return [d.outcome for d in logged if d is not None]
            time.sleep(0.05)


def make_config(tmp: Path, upstream: ReplayServer) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for deployment in config["model_list"]:
        deployment["litellm_params"]["api_base"] = upstream.url
        block = deployment["model_info"].get("llm_router")
        if block and "usd_budget" in block:
            block["usd_budget"] /= 10
    template = config["model_list"][-1]
    config["model_list"] += [
        {"model_name": "capped", "litellm_params": template["litellm_params"],
         "model_info": {"id": name, "llm_router": {"token_budget": 10}}} for name in CAPPED
    ]
    config["callback_settings"]["llm_router"].update(
        data_dir=str(tmp / "router"), embedding_model="hashing-256", warmup_queries=10, expected_queries=40)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("litellm-proxy")
    data = read_data(bundled_path())
    train = [row for row in data.rows if row.split == "train"]
    test = random.Random(3).sample([row for row in data.rows if row.split == "test"], MAX_ROUTED + 2)
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        config = make_config(tmp, upstream)
        adapter = LiteLLMAdapter.from_proxy_config(config)
        import_history(DataFile(data.path, data.models, train[:600], {}), adapter.history, adapter.embedder,
                       store_prompts=adapter.settings.store_prompts)
        master_key = yaml.safe_load(config.read_text())["general_settings"]["master_key"]
        with LiteLLMProxy(config, log=tmp / "proxy.log") as proxy:
            yield Stack(proxy, {"Authorization": f"Bearer {master_key}"}, adapter, test)
    finally:
        upstream.stop()


def test_routed_requests_are_answered_by_the_routers_choice_and_recorded(stack: Stack) -> None:
    before = {d.name: d.spent.get("usd", 0.0) for d in stack.chat.status().deployments}
    # Which deployment takes a request depends on whether the previous one's usage was recorded yet (LiteLLM logs
    # after answering), so when a budget binds varies from run to run: ask until one does, in rounds of ten.
    answers: list[httpx.Response] = []
    for start in range(0, MAX_ROUTED, 10):
        answers += [stack.ask("chat", row.prompt) for row in stack.prompts[start:start + 10]]
        assert [r.status_code for r in answers] == [200] * len(answers)
        stack.recorded([r.headers["x-llm-router-decision-id"] for r in answers])
        largest_hold = holds(stack, answers)
        budgeted = [d for d in stack.chat.status().deployments if not d.fallback]
        if len(answers) >= 30 and any(d.remaining["usd"] < largest_hold[d.name] for d in budgeted):
            break
    else:
        pytest.fail(f"no budget bound within {MAX_ROUTED} requests")
    for response in answers:
        assert response.headers["x-litellm-model-id"] == response.headers["x-llm-router-deployment"]
    assert {r.headers["x-llm-router-phase"] for r in answers} >= {"warmup", "learned"}
    assert len({r.headers["x-litellm-model-id"] for r in answers}) >= 2

    outcomes = stack.recorded([r.headers["x-llm-router-decision-id"] for r in answers])
    for response, outcome in zip(answers, outcomes, strict=True):
        usage = response.json()["usage"]
        assert (outcome["prompt_tokens"], outcome["completion_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"])

    # The ledger charged what LiteLLM computed for each call.
    charged: dict[str, float] = defaultdict(float)
    overrun: dict[str, float] = defaultdict(float)  # by how much calls cost more than the router had reserved
    for response in answers:
        name, cost = response.headers["x-litellm-model-id"], float(response.headers["x-litellm-response-cost"])
        charged[name] += cost
        overrun[name] += max(0.0, cost - hold(stack, response))
    status = stack.chat.status().deployments
    for deployment in status:
        assert deployment.spent["usd"] - before[deployment.name] == pytest.approx(charged[deployment.name])
    # A deployment only took a call its remaining budget covered: it ends over budget by no more than its calls cost
    # above what the router held for them.
    for deployment in (d for d in status if not d.fallback):
        assert deployment.spent["usd"] <= deployment.limits["usd"] + overrun[deployment.name] + 1e-12


def hold(stack: Stack, response: httpx.Response) -> float:
    """What the router held of its deployment's USD budget for the request that got `response`."""
    logged = stack.chat.decisions.get(response.headers["x-llm-router-decision-id"])
    assert logged is not None
    return float(logged.estimates[response.headers["x-litellm-model-id"]]["usd_hold"])


def holds(stack: Stack, answers: list[httpx.Response]) -> dict[str, float]:
    """The largest hold per deployment over `answers`: a deployment with less left can't pay for a call like it."""
    largest: dict[str, float] = defaultdict(float)
    for response in answers:
        name = response.headers["x-litellm-model-id"]
        largest[name] = max(largest[name], hold(stack, response))
    return largest


def test_a_streamed_request_is_recorded_with_its_real_usage(stack: Stack) -> None:
    with httpx.stream("POST", f"{stack.proxy.url}/v1/chat/completions", headers=stack.headers, timeout=60,
                      json={"model": "chat", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": stack.prompts[MAX_ROUTED].prompt}]}) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
        headers = response.headers
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")][-1]
    assert headers["x-litellm-model-id"] == headers["x-llm-router-deployment"]
    [outcome] = stack.recorded([headers["x-llm-router-decision-id"]])
    assert (outcome["prompt_tokens"], outcome["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])
    assert outcome["completion_tokens"] > 0


def test_an_exhausted_group_gets_429_naming_its_deployments(stack: Stack) -> None:
    response = stack.ask("capped", stack.prompts[0].prompt)
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    assert all(f"{name} (" in message for name in CAPPED), message


def test_a_group_without_router_settings_passes_through(stack: Stack) -> None:
    decisions = stack.chat.status().decisions
    response = stack.ask("assistant", stack.prompts[MAX_ROUTED + 1].prompt)
    assert response.status_code == 200
    assert response.headers["x-litellm-model-id"] == "assistant-claude-instant"
    assert not [h for h in response.headers if h.startswith("x-llm-router-")]
    assert stack.adapter.router("assistant") is None
    assert stack.chat.status().decisions == decisions


NO_TEXT = [
    [{"role": "user", "content": None}],
    [{"role": "user", "content": "   "}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
]


def post(stack: Stack, group: str, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return httpx.post(f"{stack.proxy.url}/v1/chat/completions", headers=stack.headers, timeout=60,
                      json={"model": group, "messages": messages, **extra})


def test_requests_without_text_are_routed_and_charged_never_passed_through(stack: Stack) -> None:
    answers = [post(stack, "chat", messages) for messages in NO_TEXT]
    assert [r.status_code for r in answers] == [200] * len(answers)
    outcomes = stack.recorded([r.headers["x-llm-router-decision-id"] for r in answers])
    assert all(o["prompt_tokens"] > 0 for o in outcomes)  # charged with the usage the upstream reported
    for messages in NO_TEXT:  # a group whose budgets cannot pay refuses them as it refuses text
        assert post(stack, "capped", messages).status_code == 429
    assert post(stack, "chat", []).status_code == 400


def test_a_client_cannot_settle_or_release_another_requests_decision(stack: Stack) -> None:
    # Another client's call in flight, as a proxy worker records it (the test process must not read the embedded
    # Chroma store the proxy is writing to, so the decision is written as routing writes it).
    victim, name = uuid.uuid4().hex, "chat-gpt-4"
    stack.chat.decisions.add(victim, name, "gpt-4-1106-preview", "learned", np.zeros(0, np.float32), None, {})
    assert stack.chat.ledger.try_reserve(Reservation(victim, name, 0, {"tokens": 500.0, "usd": 0.005}, {}, 1e12))
    forged = {"llm_router": {"request": "guess", "decision_id": victim, "deployment": name,
                             "attempts": [{"group": "chat", "decision_id": victim, "deployment": name}]}}
    response = post(stack, "chat", [{"role": "user", "content": "hello"}], metadata=forged)
    assert response.status_code == 200
    assert response.headers["x-llm-router-decision-id"] != victim
    stack.recorded([response.headers["x-llm-router-decision-id"]])
    logged = stack.chat.decisions.get(victim)
    assert logged is not None and logged.status == "open"  # untouched ...
    assert stack.chat.ledger.settle(victim, {"tokens": 520.0, "usd": 0.0052}) is not None  # ... and still held


def test_a_budget_refusal_is_answered_once_not_retried(stack: Stack) -> None:
    capped = stack.adapter.router("capped")
    assert capped is not None
    before = capped.status().decisions
    response = post(stack, "capped", [{"role": "user", "content": stack.prompts[0].prompt}], num_retries=3)
    assert response.status_code == 429
    assert capped.status().decisions == before + 1  # one declined decision: no retry reached the router


def test_quality_feedback_by_decision_id_with_the_proxys_key(stack: Stack) -> None:
    answer = stack.ask("chat", "rate this answer: what is the capital of France?")
    assert answer.status_code == 200
    decision_id = answer.headers["x-llm-router-decision-id"]
    url = f"{stack.proxy.url}/llm-router/feedback"

    def send(body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(url, headers=stack.headers if headers is None else headers, json=body, timeout=30)

    # Sent as soon as the answer is read: the proxy may not have recorded the call yet, and the score is kept anyway.
    scored = send({"decision_id": decision_id, "quality": 0.8})
    assert scored.status_code == 200
    assert scored.json() == {"decision_id": decision_id, "quality": 0.8, "status": "recorded"}
    [outcome] = stack.recorded([decision_id])
    assert outcome["quality"] == 0.8 and outcome["completion_tokens"] > 0

    assert send({"decision_id": decision_id, "quality": 0.8}, headers={}).status_code == 401
    assert send([decision_id, 0.8], headers={}).status_code == 401  # the key is checked first, whatever the body
    assert send({"decision_id": decision_id, "quality": 0.8},
                headers={"Authorization": "Bearer sk-not-this-proxys-key"}).status_code == 401
    for body, field in (({"decision_id": decision_id, "quality": 1.5}, "quality"),
                        ({"decision_id": decision_id, "quality": "good"}, "quality"),
                        ({"quality": 0.5}, "decision_id"),
                        ([decision_id, 0.5], "body")):
        refused = send(body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text
    not_json = httpx.post(url, headers=stack.headers, content=b"{not json", timeout=30)
    assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"
    unknown = send({"decision_id": uuid.uuid4().hex, "quality": 0.5})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "decision_id"


def test_the_status_of_every_routed_group_with_the_proxys_key(stack: Stack) -> None:
    url = f"{stack.proxy.url}/llm-router/status"
    response = httpx.get(url, headers=stack.headers, timeout=30)
    assert response.status_code == 200
    groups = response.json()["model_groups"]
    assert list(groups) == ["chat", "capped"]  # "assistant" is not routed
    shown = RouterStatus.model_validate(groups["chat"])
    assert shown.decisions == stack.chat.status().decisions  # what the proxy's router counted, read from its log
    assert {d.name for d in shown.deployments} == {d.name for d in stack.chat.status().deployments}
    for headers in ({}, {"Authorization": "Bearer sk-not-this-proxys-key"}):
        assert httpx.get(url, headers=headers, timeout=30).status_code == 401
