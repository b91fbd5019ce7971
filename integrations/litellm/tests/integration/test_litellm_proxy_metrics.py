"""The router's metrics on a real LiteLLM proxy's ``/metrics``, beside LiteLLM's own Prometheus metrics.

The proxy runs the example config against the replay upstream, with LiteLLM's ``"prometheus"`` callback before the
router's: ``litellm_settings.callbacks: ["prometheus", "llm_router_litellm.proxy.router_callback"]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from llm_router_litellm.testing import LiteLLMProxy
from prometheus_client.parser import text_string_to_metric_families
from router_litellm_support import example_config, master_key, wait_for

from llm_router_plugin.replay import ReplayBook, ReplayServer

pytestmark = pytest.mark.integration

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Prove that the square root of 2 is irrational.",
    "Summarise the plot of Hamlet in two sentences.",
    "Write a Python function that reverses a linked list.",
    "Explain photosynthesis to a ten year old.",
]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Proxy:
    proxy: LiteLLMProxy
    headers: dict[str, str]

    def scrape(self, path: str = "/metrics") -> Samples:
        # LiteLLM mounts /metrics as an app: /metrics redirects to /metrics/ (Prometheus follows it).
        response = httpx.get(f"{self.proxy.url}{path}", headers=self.headers, timeout=30, follow_redirects=True)
        assert response.status_code == 200, response.text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.text) for s in family.samples}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("litellm-metrics")
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        path = example_config(tmp / "config.yaml", upstream.url, {
            "data_dir": str(tmp / "router"), "embedding_model": "hashing-256", "warmup_queries": 10,
        }, budget_share=1.0)
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["litellm_settings"]["callbacks"] = ["prometheus", "llm_router_litellm.proxy.router_callback"]
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        # The proxy inherits this process' environment (PYTHONPATH included): it imports this checkout's router.
        with LiteLLMProxy(path, log=tmp / "proxy.log") as running:
            yield Proxy(running, {"Authorization": f"Bearer {master_key(path)}"})
    finally:
        upstream.stop()


def by_labels(samples: Samples, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items()
            if sample == name and set(match.items()) <= set(labels)}


def test_routed_requests_show_on_the_proxys_metrics(proxy: Proxy) -> None:
    answers = [httpx.post(f"{proxy.proxy.url}/v1/chat/completions", headers=proxy.headers, timeout=60,
                          json={"model": "chat", "messages": [{"role": "user", "content": p}]}) for p in PROMPTS]
    assert [r.status_code for r in answers] == [200] * len(PROMPTS)
    served = Counter((r.headers["x-litellm-model-id"], r.headers["x-llm-router-phase"]) for r in answers)
    unrouted = httpx.post(f"{proxy.proxy.url}/v1/chat/completions", headers=proxy.headers, timeout=60,
                          json={"model": "assistant", "messages": [{"role": "user", "content": PROMPTS[0]}]})
    assert unrouted.status_code == 200

    # LiteLLM reports each call's usage just after answering: wait until every decision is recorded.
    def all_recorded() -> Samples | None:
        samples = proxy.scrape()
        closed = by_labels(samples, "llm_router_decisions_total", group="chat", outcome="recorded")
        return samples if sum(closed.values()) == len(PROMPTS) else None

    samples = wait_for(all_recorded, timeout=30)
    assert samples, "the router's decisions were not all recorded"
    assert any(name.startswith("litellm_") for name, _ in samples)  # LiteLLM's own metrics, on the same page

    routed = by_labels(samples, "llm_router_decisions_total", group="chat", outcome="routed")
    assert Counter({(dict(k)["deployment"], dict(k)["phase"]): v for k, v in routed.items() if v}) == served
    recorded = by_labels(samples, "llm_router_decisions_total", group="chat", outcome="recorded")
    assert Counter({(dict(k)["deployment"], dict(k)["phase"]): v for k, v in recorded.items() if v}) == served
    assert not by_labels(samples, "llm_router_decisions_total", group="assistant")  # not a routed group
    assert samples[("llm_router_route_duration_seconds_count", (("group", "chat"),))] == len(PROMPTS)

    assert samples[("llm_router_status_up", (("group", "chat"),))] == 1
    for deployment, _ in served:
        labels = (("deployment", deployment), ("group", "chat"), ("unit", "usd"))
        assert samples[("llm_router_budget_spent", labels)] > 0
        assert samples[("llm_router_budget_remaining", labels)] == pytest.approx(
            samples[("llm_router_budget_limit", labels)] - samples[("llm_router_budget_spent", labels)]
            - samples[("llm_router_budget_reserved", labels)])
        assert samples[("llm_router_estimate_ratio_count", labels)] == sum(
            n for (d, _), n in served.items() if d == deployment)
    assert set(by_labels(samples, "llm_router_reservations_open", group="chat").values()) == {0.0}


def test_the_router_route_serves_its_metrics_alone_behind_the_key(proxy: Proxy) -> None:
    samples = proxy.scrape("/llm-router/metrics")
    assert ("llm_router_status_up", (("group", "chat"),)) in samples
    assert not any(name.startswith("litellm_") for name, _ in samples)
    assert httpx.get(f"{proxy.proxy.url}/llm-router/metrics", timeout=30).status_code == 401
    # As LiteLLM's own /metrics (require_auth_for_metrics_endpoint is on by default): a scraper sends a key.
    assert httpx.get(f"{proxy.proxy.url}/metrics/", timeout=30).status_code == 401

