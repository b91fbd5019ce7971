"""The proxy config of `llm-router bench-scale`'s throughput run: the default deployments, routed, on shared stores."""

from __future__ import annotations

from pathlib import Path

from llm_router_litellm import deployment_config

from llm_router_plugin.bench.scale import TOKEN_BUDGET, scale_config
from llm_router_plugin.bench.scale_proxy import GROUP, proxy_config
from llm_router_plugin.testing import ChromaServer


def test_every_default_deployment_is_routed_with_its_price_and_budgets(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma")  # only its address is used
    config = proxy_config(tmp_path, "http://127.0.0.1:9", "redis://127.0.0.1:6399/0", chroma, 4, 464)
    expected = {d.name: d for d in scale_config(tmp_path, "sqlite", 464).deployments}
    routed = [deployment_config(d) for d in config["model_list"]]
    assert {d["model_name"] for d in config["model_list"]} == {GROUP}
    assert [d.name for d in routed] == list(expected)
    for deployment in routed:
        shipped = expected[deployment.name]
        assert deployment.model == shipped.model  # the history profile, from the litellm model name
        assert deployment.input_usd_per_mtok == shipped.input_usd_per_mtok
        assert deployment.output_usd_per_mtok == shipped.output_usd_per_mtok
        assert (deployment.usd_budget, deployment.token_budget, deployment.fallback) == (
            shipped.usd_budget, TOKEN_BUDGET, shipped.fallback)
    assert all(d["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1" for d in config["model_list"])
    settings = config["callback_settings"]["llm_router"]
    assert settings["ledger"] == "redis://127.0.0.1:6399/0" and settings["ledger_namespace"] == "bench-scale-4w"
    assert (settings["chroma_host"], settings["chroma_port"]) == (chroma.host, chroma.port)
    assert settings["embedding_model"] == "hashing-384" and settings["expected_queries"] == 464
    assert settings["history_batch_s"] == 1.0


def test_the_baseline_is_the_same_proxy_without_the_router(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma")
    routed = proxy_config(tmp_path, "http://127.0.0.1:9", "redis://127.0.0.1:6399/0", chroma, 2, 464)
    alone = proxy_config(tmp_path, "http://127.0.0.1:9", "redis://127.0.0.1:6399/0", chroma, 2, 464, routed=False)
    assert "callback_settings" not in alone and "litellm_settings" not in alone
    assert [d["litellm_params"] for d in alone["model_list"]] == [d["litellm_params"] for d in routed["model_list"]]
    assert all("llm_router" not in d["model_info"] for d in alone["model_list"])
