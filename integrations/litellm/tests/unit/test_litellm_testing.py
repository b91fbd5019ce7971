import socket
from pathlib import Path

import pytest
from llm_router_litellm.testing import LiteLLMProxy, free_port


def test_a_missing_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config"):
        LiteLLMProxy(tmp_path / "config.yaml")


def test_the_proxy_gets_a_free_loopback_port_and_logs_beside_its_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n", encoding="utf-8")
    proxy = LiteLLMProxy(config)
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert proxy.log == tmp_path / "proxy.log"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))  # free: binding works
    proxy.stop()  # never started: nothing to stop


def test_workers_are_passed_to_litellm_and_must_be_positive(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n", encoding="utf-8")
    assert LiteLLMProxy(config, num_workers=4).command()[-2:] == ["--num_workers", "4"]
    with pytest.raises(ValueError, match="num_workers"):
        LiteLLMProxy(config, num_workers=0)
