"""Two LiteLLM proxies as two hosts would run them: one Redis ledger, one Chroma server, separate data folders.

Both proxies run the example config against the replay upstream, with budgets a tenth of the example's, a warm-up
of 10 decisions and a 5-second reservation timeout. Their budgets are on LiteLLM's own Redis
(``router_settings.redis_host``/``redis_port``; a redis-server that writes every change to its append-only file before
answering), their history on one Chroma server seeded with RouterBench outcomes. The tests run in order on one
cluster:

1. 200 concurrent requests split across the proxies: the Redis ledger charged each deployment exactly what LiteLLM
   computed for the calls it answered, and no budgeted deployment spent past its limit by more than its calls cost
   above what the router held for them (the bound of ``test_litellm_proxy_load.py``).
2. Both proxies show the same dual weights (the weights are shared through the ledger).
3. Redis killed (SIGKILL) mid-traffic: routed requests get HTTP 503, never a 500; Redis restarted on its data and
   port: traffic is served again.
4. The Chroma server stopped: requests are still served, from the history index each proxy holds in memory.
5. Nothing recorded is lost: outcomes reported while Redis was away are settled once it is back, and every
   deployment's ledger spend is again exactly the cost of the calls it answered.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from llm_router_litellm import LiteLLMAdapter
from llm_router_litellm.testing import LiteLLMProxy
from router_litellm_support import example_config, master_key

from llm_router_plugin import DataFile, Router, RouterStatus, bundled_path, import_history, read_data
from llm_router_plugin.replay import ReplayBook, ReplayServer
from llm_router_plugin.testing import ChromaServer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

REQUESTS = 200
CONCURRENCY = 16
HISTORY = 300  # RouterBench training rows seeded into the Chroma server
TIMEOUT_S = 5.0
GROUP = "chat"


@dataclass
class Cluster:
    redis: RedisServer
    chroma: ChromaServer
    proxies: list[LiteLLMProxy]
    adapters: list[LiteLLMAdapter]  # one per proxy, on its data_dir: its decision log, the shared ledger
    key: str
    prompts: list[str]
    answered: list[httpx.Response] = field(default_factory=list)  # every 200 of a routed request, all phases

    @property
    def chat(self) -> Router:
        router = self.adapters[0].router(GROUP)
        assert router is not None
        return router

    def spend(self) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
        """(spent, held) of every deployment, read from the Redis ledger alone (not from history)."""
        now = time.time()
        return {d.name: self.chat.ledger.usage(d.name, 0, now) for d in self.chat.config.deployments}

    def hold(self, response: httpx.Response) -> float:
        """What the router held of the answering deployment's USD budget for a call, from its proxy's decision log."""
        decision_id, name = response.headers["x-llm-router-decision-id"], response.headers["x-litellm-model-id"]
        for adapter in self.adapters:
            router = adapter.router(GROUP)
            logged = router.decisions.get(decision_id) if router is not None else None
            if logged is not None:
                return float(logged.estimates[name]["usd_hold"])
        raise AssertionError(f"no proxy logged decision {decision_id}")

    def settled(self, timeout: float = 60.0) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
        """The ledger once no hold is live (the proxies record a call just after answering it)."""
        deadline = time.monotonic() + timeout
        while True:
            spend = self.spend()
            if all(held["usd"] == 0 for _, held in spend.values()) or time.monotonic() > deadline:
                return spend
            time.sleep(0.2)

    async def send(self, prompts: list[str], concurrency: int = CONCURRENCY) -> list[httpx.Response | None]:
        """Every prompt to the proxies in turn, ``concurrency`` at a time; ``None`` for a request cut off."""
        gate = asyncio.Semaphore(concurrency)

        async def ask(client: httpx.AsyncClient, proxy: LiteLLMProxy, prompt: str) -> httpx.Response | None:
            async with gate:
                try:
                    response = await client.post(
                        f"{proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {self.key}"},
                        json={"model": GROUP, "messages": [{"role": "user", "content": prompt}]})
                except httpx.TransportError:
                    return None
            if response.status_code == 200:
                self.answered.append(response)
            return response

        async with httpx.AsyncClient(timeout=120) as client:
            return list(await asyncio.gather(*(ask(client, proxy, prompt) for proxy, prompt
                                               in zip(itertools.cycle(self.proxies), prompts, strict=False))))

    def status(self, proxy: LiteLLMProxy) -> httpx.Response:
        return httpx.get(f"{proxy.url}/llm-router/status", headers={"Authorization": f"Bearer {self.key}"},
                         timeout=30)


def proxy_configs(tmp: Path, upstream: ReplayServer, redis: RedisServer, chroma: ChromaServer) -> list[Path]:
    configs = []
    for host in ("host-a", "host-b"):
        settings = {"data_dir": str(tmp / host / "router"), "embedding_model": "hashing-256", "warmup_queries": 10,
                    "expected_queries": REQUESTS, "reservation_timeout_s": TIMEOUT_S,
                    "chroma_host": chroma.host, "chroma_port": chroma.port}
        (tmp / host).mkdir()
        configs.append(example_config(tmp / host / "config.yaml", upstream.url, settings, budget_share=0.1,
                                      router_settings={"redis_host": redis.host, "redis_port": redis.port}))
    return configs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("multi-proxy")
    data = read_data(bundled_path())
    train = [row for row in data.rows if row.split == "train"][:HISTORY]
    prompts = [row.prompt for row in random.Random(7).sample([r for r in data.rows if r.split == "test"], 400)]
    upstream = ReplayServer(ReplayBook.from_files()).start()
    try:
        with RedisServer(tmp / "redis", persist=True) as redis, ChromaServer(tmp / "chroma") as chroma:
            configs = proxy_configs(tmp, upstream, redis, chroma)
            adapters = [LiteLLMAdapter.from_proxy_config(config) for config in configs]
            import_history(DataFile(data.path, data.models, train, {}), adapters[0].history, adapters[0].embedder)
            proxies = [LiteLLMProxy(config, log=config.with_name("proxy.log")) for config in configs]
            try:
                with ThreadPoolExecutor(len(proxies)) as pool:
                    list(pool.map(LiteLLMProxy.start, proxies))
                yield Cluster(redis, chroma, proxies, adapters, master_key(configs[0]), prompts)
            finally:
                for proxy in proxies:
                    proxy.stop()
    finally:
        upstream.stop()


def test_the_shared_ledger_charges_what_litellm_computed_and_holds_the_budgets(cluster: Cluster) -> None:
    answers = asyncio.run(cluster.send(cluster.prompts[:REQUESTS]))
    assert all(r is not None and r.status_code == 200 for r in answers), [r and r.status_code for r in answers]
    served_by = {str(r.url).split("/v1")[0] for r in answers if r is not None}
    assert served_by == {p.url for p in cluster.proxies}
    spend = cluster.settled()
    charged: dict[str, float] = defaultdict(float)
    overrun: dict[str, float] = defaultdict(float)
    largest_hold: dict[str, float] = defaultdict(float)
    for response in cluster.answered:
        name, cost = response.headers["x-litellm-model-id"], float(response.headers["x-litellm-response-cost"])
        charged[name] += cost
        held = cluster.hold(response)
        overrun[name] += max(0.0, cost - held)
        largest_hold[name] = max(largest_hold[name], held)
    for deployment in cluster.chat.config.deployments:
        spent, held = spend[deployment.name]
        assert held["usd"] == 0, deployment.name
        assert spent["usd"] == pytest.approx(charged[deployment.name], rel=1e-9, abs=1e-12), deployment.name
        if not deployment.fallback:
            limit = deployment.budget_limits()["usd"]
            assert spent["usd"] <= limit + overrun[deployment.name] + 1e-12, deployment.name
    budgeted = [d for d in cluster.chat.config.deployments if not d.fallback]
    assert any(d.budget_limits()["usd"] - spend[d.name][0]["usd"] < largest_hold[d.name] for d in budgeted), \
        "no budget bound"


def shown_weights(cluster: Cluster) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """Each proxy's phase and dual weights of the routed group, as its status route shows them."""
    shown = []
    for proxy in cluster.proxies:
        response = cluster.status(proxy)
        assert response.status_code == 200, response.text
        status = RouterStatus.model_validate(response.json()["model_groups"][GROUP])
        shown.append((status.phase, {d.name: d.weights for d in status.deployments}))
    return shown


def test_both_proxies_show_the_same_dual_weights(cluster: Cluster) -> None:
    deadline = time.monotonic() + 10  # a proxy may read the weights another one solved on its next decision
    while (shown := shown_weights(cluster)) and shown[0] != shown[1] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [phase for phase, _ in shown] == ["learned", "learned"]
    assert shown[0][1] == shown[1][1]


def test_a_redis_outage_is_a_503_and_traffic_comes_back_with_redis(cluster: Cluster) -> None:
    prompts = iter(cluster.prompts[REQUESTS:])

    async def kill_after(answers: int) -> None:
        for _ in range(6000):  # at most a minute
            if len(cluster.answered) >= answers:
                break
            await asyncio.sleep(0.01)
        cluster.redis.kill()

    async def kill_mid_traffic() -> list[httpx.Response | None]:
        answers, _ = await asyncio.gather(cluster.send([next(prompts) for _ in range(40)], concurrency=4),
                                          kill_after(len(cluster.answered) + 8))
        return answers

    answers = asyncio.run(kill_mid_traffic())
    codes = [r.status_code for r in answers if r is not None]
    assert set(codes) <= {200, 503}, codes  # fails closed: no 500, no 429 for budgets that cannot be read
    assert 503 in codes
    for response in asyncio.run(cluster.send([next(prompts) for _ in range(4)])):
        assert response is not None and response.status_code == 503
        assert "budget ledger unreachable" in response.json()["error"]["message"]

    cluster.redis.start()  # same port, same append-only file
    after = asyncio.run(cluster.send([next(prompts) for _ in range(20)], concurrency=4))
    assert [r.status_code for r in after if r is not None] == [200] * len(after)


def test_with_the_history_server_stopped_requests_are_still_served(cluster: Cluster) -> None:
    cluster.chroma.stop()
    answers = asyncio.run(cluster.send(cluster.prompts[REQUESTS + 64:REQUESTS + 84], concurrency=4))
    assert [r.status_code for r in answers if r is not None] == [200] * len(answers)
    statuses = [cluster.status(proxy).status_code for proxy in cluster.proxies]
    assert statuses == [200, 200]


def test_no_recorded_spend_is_lost(cluster: Cluster) -> None:
    # Outcomes reported while Redis was away were kept by each proxy's router; its next request settles them (the
    # retry runs at most every 5 s, and holds that expired meanwhile were charged in full until then).
    time.sleep(TIMEOUT_S + 1)
    answers = asyncio.run(cluster.send(cluster.prompts[REQUESTS + 84:REQUESTS + 86], concurrency=1))
    assert [r.status_code for r in answers if r is not None] == [200, 200]
    spend = cluster.settled()
    true_cost: dict[str, float] = defaultdict(float)
    for response in cluster.answered:
        true_cost[response.headers["x-litellm-model-id"]] += float(response.headers["x-litellm-response-cost"])
    for name, (spent, held) in spend.items():
        assert held["usd"] == 0, name
        assert spent["usd"] == pytest.approx(true_cost[name], rel=1e-9, abs=1e-12), name
