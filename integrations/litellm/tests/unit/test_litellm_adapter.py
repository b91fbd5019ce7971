"""How LiteLLM deployments and settings become routers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from llm_router_litellm import LiteLLMAdapter, decision_headers, deployment_config
from router_litellm_support import MATH, deployment, messages, model_list

from llm_router_plugin.testing import LOOPBACK, free_port

MakeAdapter = Callable[..., LiteLLMAdapter]


@pytest.mark.parametrize(("litellm_model", "profile"), [
    ("openai/gpt-4-1106-preview", "gpt-4-1106-preview"),
    ("openai/meta/llama-2-70b-chat", "meta/llama-2-70b-chat"),  # the provider prefix goes, once
    ("my-vendor/model-x", "my-vendor/model-x"),  # not a LiteLLM provider: the whole name is the profile
])
def test_the_profile_defaults_to_the_litellm_model_without_its_provider(litellm_model: str, profile: str) -> None:
    assert deployment_config(deployment("g", "d1", litellm_model, {})).model == profile


def test_model_info_settings_become_the_deployments_budget() -> None:
    block = {"model": "claude-v2", "usd_budget": 2.5, "window": "1d", "fallback": True}
    config = deployment_config(deployment("g", "claude-eu", "anthropic/claude-2", block))
    assert (config.name, config.model, config.usd_budget, config.window, config.fallback) == (
        "claude-eu", "claude-v2", 2.5, "1d", True)
    assert config.budget_limits() == {"usd": 2.5}


@pytest.mark.parametrize(("info", "message"), [
    ({"llm_router": {}}, "model_info.id"),
    ({"id": "d1", "llm_router": ["usd_budget", 1]}, "must be a mapping"),
    ({"id": "d1", "llm_router": {"name": "x"}}, "named by model_info.id"),
    ({"id": "d1", "llm_router": {"token_budget": -5}}, "'d1'"),
    ({"id": "d1", "llm_router": {"window": "fortnight"}}, "window"),
])
def test_invalid_deployment_settings_name_the_problem(info: dict[str, Any], message: str) -> None:
    entry = {"model_name": "g", "litellm_params": {"model": "openai/x"}, "model_info": info}
    with pytest.raises(ValueError, match=message):
        deployment_config(entry)


@pytest.mark.parametrize(("settings", "message"), [
    ({"deployments": []}, "deployments"),
    ({"warmup_queries": 0}, "warmup_queries"),
    ({"embedding_modle": "hashing-64"}, "embedding_modle"),
])
def test_invalid_settings_fail_when_the_adapter_is_built(
    settings: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        LiteLLMAdapter(lambda: model_list(), {"data_dir": str(tmp_path), **settings})


def test_only_groups_with_router_settings_are_routed(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    chat = adapter.router("chat")
    assert chat is not None
    assert [d.name for d in chat.config.deployments] == ["big", "small"]
    assert adapter.router("other") is None
    assert adapter.router("no-such-group") is None


def test_names_outside_the_model_list_are_not_remembered(make_adapter: MakeAdapter) -> None:
    # A client may ask for any model name (wildcard groups pass it on): the adapter must not grow with them.
    adapter = make_adapter()
    for i in range(50):
        assert adapter.router(f"client-chosen-{i}") is None
    assert adapter.router("chat") is not None
    assert len(adapter._routers) <= 2


def test_each_routed_group_has_its_own_ledger_and_shares_history(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter([*model_list(), deployment("code", "coder", "openai/big-model", {"token_budget": 10_000})])
    chat, code = adapter.router("chat"), adapter.router("code")
    assert chat is not None and code is not None
    assert chat.config.data_dir != code.config.data_dir
    assert chat.history is code.history is adapter.history
    code.route("write a python function", prompt_tokens=5)
    assert code.status().decisions == 1
    assert chat.status().decisions == 0


def test_from_proxy_config_reads_model_list_and_callback_settings(tmp_path: Path) -> None:
    config = {
        "model_list": model_list(),
        "litellm_settings": {"callbacks": ["llm_router_litellm.proxy.router_callback"]},
        "callback_settings": {"llm_router": {"data_dir": str(tmp_path / "r"), "embedding_model": "hashing-64",
                                             "warmup_queries": 7}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    adapter = LiteLLMAdapter.from_proxy_config(path)
    chat = adapter.router("chat")
    assert chat is not None and chat.config.warmup_queries == 7
    assert Path(chat.config.data_dir).parent == tmp_path / "r" / "litellm"


def test_from_proxy_config_refuses_a_file_without_model_list(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("deployments: []\n", encoding="utf-8")
    with pytest.raises(ValueError, match="model_list"):
        LiteLLMAdapter.from_proxy_config(path)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such LiteLLM proxy config file: {path}"),
    ("model_list:\n  - model_name: chat\n   litellm_params: {}\n", "{path}, line 3: invalid YAML ("),
])
def test_from_proxy_config_errors_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        LiteLLMAdapter.from_proxy_config(path)
    assert str(raised.value).startswith(message.format(path=path))


def test_decision_headers_are_empty_without_a_decision() -> None:
    assert decision_headers({"metadata": {"user": "u1"}}) == {}
    assert decision_headers({}) == {}


def test_a_proxy_config_whose_chroma_server_is_down_still_starts_and_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: the Chroma server is not up yet
    settings = {"data_dir": str(tmp_path / "r"), "embedding_model": "hashing-64", "chroma_host": LOOPBACK,
                "chroma_port": port}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": model_list(), "callback_settings": {"llm_router": settings}}),
                    encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        adapter = LiteLLMAdapter.from_proxy_config(path)
        assert adapter.validate() == ["chat"]  # what the proxy callback does at start
    assert any(f"{LOOPBACK}:{port}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    request: dict[str, Any] = {}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), request)
    assert chosen is not None
    reason = unquote(decision_headers(request)["x-llm-router-reason"])
    assert "history unreachable: estimated from each model's cached mean" in reason
    chat = adapter.router("chat")
    assert chat is not None
    assert chat.status().history_size is None
