"""The proxy run of `llm-router bench-speed`: LiteLLM with the router and alone, taking turns, on real servers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_router_plugin.bench.speed import SpeedOptions, measure_proxies


@pytest.mark.integration
def test_both_proxies_answer_every_request_at_each_in_flight_count(tmp_path: Path) -> None:
    options = SpeedOptions(sizes=(10,), concurrency_size=0, proxy_requests=6, proxy_in_flight=(1, 3), block=2,
                           embedder="hashing-384")  # the embedder the router of the proxy uses (a cheap one here)
    result = measure_proxies(tmp_path, options)
    assert result["requests"] == 6 and [level["in_flight"] for level in result["levels"]] == [1, 3]
    for level in result["levels"]:
        assert level["block"] == max(2, level["in_flight"])
        for proxy in ("with_router", "litellm_alone"):
            latency = level[proxy]["latency_ms"]
            assert level[proxy]["errors"] == 0 and latency["n"] == 6
            assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert set(level["added_ms"]) == {"p50", "p90"}
    # Only the routed proxy has a router, whose decision log its requests went through.
    assert list((tmp_path / "proxy" / "router").rglob("ledger.sqlite3"))
    assert not (tmp_path / "proxy-alone" / "router").exists()
    config = yaml.safe_load((tmp_path / "proxy" / "config.yaml").read_text(encoding="utf-8"))
    assert config["callback_settings"]["llm_router"]["embedding_model"] == "hashing-384"
