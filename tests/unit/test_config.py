import re
from pathlib import Path

import pytest

from llm_router_plugin import RouterConfig
from llm_router_plugin.config import parse_window


def config(**overrides: object) -> dict:
    base: dict = {"deployments": [{"name": "a", "token_budget": 100}, {"name": "b", "model": "m-b"}]}
    base.update(overrides)
    return base


def test_defaults_and_profiles() -> None:
    cfg = RouterConfig.from_dict(config())
    assert cfg.deployments[0].model == "a"  # the profile defaults to the deployment name
    assert cfg.profiles == ["a", "m-b"]
    assert cfg.estimator.k == 5
    assert cfg.deployments[0].budget_limits() == {"tokens": 100.0}
    assert cfg.deployments[1].budget_limits() == {}
    assert cfg.embedding_threads == 1 and cfg.embedding_backend == "torch"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"deployments": []}, "deployments"),
        (config(deployments=[{"name": "a"}, {"name": "a"}]), "duplicate"),
        (config(deployments=[{"name": "a", "token_budget": -5}]), "deployments.0.token_budget"),
        (config(deployments=[{"name": "a", "usd_budget": -0.1}]), "deployments.0.usd_budget"),
        (config(deployments=[{"name": "a", "window": "soon"}]), "deployments.0.window"),
        (config(mode="quality_target"), "quality_target"),
        (config(quality_target=1.5), "quality_target"),
        (config(estimator={"k": 0}), "estimator.k"),
        (config(unknown_knob=1), "unknown_knob"),
        (config(embedding_batch_ms=-1), "embedding_batch_ms"),
        (config(embedding_batch_size=0), "embedding_batch_size"),
        (config(embedding_backend="fp16"), "embedding_backend"),
        (config(embedding_backend="onnx-int8", embedding_model="hashing-64"), "embedding_backend"),
        (config(embedding_threads=0), "embedding_threads"),
    ],
)
def test_invalid_config_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RouterConfig.from_dict(data)


def test_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        RouterConfig.from_dict(["a"])


def test_unknown_deployment_name() -> None:
    with pytest.raises(ValueError, match="unknown deployment name 'zzz'"):
        RouterConfig.from_dict(config()).deployment("zzz")


def test_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("deployments:\n  - {name: x, usd_budget: 1.5, window: 1h, fallback: true}\nwarmup_queries: 7\n")
    cfg = RouterConfig.from_yaml(path)
    assert cfg.warmup_queries == 7
    assert cfg.deployments[0].window_seconds == 3600
    assert cfg.deployments[0].fallback


@pytest.mark.parametrize(("text", "seconds"), [("total", None), ("30m", 1800), ("1d", 86400), ("2w", 1209600)])
def test_parse_window(text: str, seconds: float | None) -> None:
    assert parse_window(text) == seconds


def test_shipped_default_config_is_valid() -> None:
    from llm_router_plugin import bundled_path

    cfg = RouterConfig.from_yaml(bundled_path("default_router.yaml"))
    assert len(cfg.deployments) == 11
    assert sum(d.fallback for d in cfg.deployments) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("usd_budget", float("inf")), ("usd_budget", float("nan")), ("input_usd_per_mtok", float("inf")),
])
def test_non_finite_deployment_numbers_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RouterConfig.from_dict({"deployments": [{"name": "a", field: value}]})


@pytest.mark.parametrize("field", ["reservation_timeout_s", "reserve_margin"])
def test_non_finite_router_numbers_are_rejected(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RouterConfig.from_dict({"deployments": [{"name": "a"}], field: float("inf")})


def test_broken_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("deployments:\n  - name: a\n    model: [unclosed\nmode: max_quality\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}, line 4: invalid YAML \(.+\)$"):
        RouterConfig.from_yaml(path)


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^no such config file: {re.escape(str(tmp_path / 'nope.yaml'))}$"):
        RouterConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("content", [b"\xff\xfe deployments", None])
def test_unreadable_config_names_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "router.yaml"
    if content is None:
        path.mkdir()  # a folder where the file should be
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: cannot read the config "):
        RouterConfig.from_yaml(path)


def test_invalid_field_in_a_config_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("deployments: []\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: invalid router config: deployments: "):
        RouterConfig.from_yaml(path)


def test_ledger_defaults_to_sqlite() -> None:
    cfg = RouterConfig.from_dict(config())
    assert (cfg.ledger, cfg.ledger_password_env, cfg.ledger_namespace) == ("sqlite", None, "llm-router")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380/2", "redis://localhost", "redis://user@h:1/0"]
)
def test_ledger_accepts_redis_urls(url: str) -> None:
    assert RouterConfig.from_dict(config(ledger=url)).ledger == url


@pytest.mark.parametrize(
    "ledger",
    ["postgres", "", "http://127.0.0.1:6379/0", "unix:///tmp/redis.sock", "redis://", "redis://h:1/db",
     "redis://h:port/0", "redis://h:1/0/1"],
)
def test_ledger_must_be_sqlite_or_a_redis_url(ledger: str) -> None:
    with pytest.raises(ValueError, match=r"ledger: "):
        RouterConfig.from_dict(config(ledger=ledger))


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@127.0.0.1:6379/0", "rediss://user:s3cret@h/0", "redis://h:1/0?password=s3cret"]
)
def test_ledger_url_with_a_password_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="ledger: put the password in the environment variable named by "
                                         "ledger_password_env, not in the URL") as caught:
        RouterConfig.from_dict(config(ledger=url))
    assert "s3cret" not in str(caught.value)


def test_ledger_password_env_must_name_a_set_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://127.0.0.1:6379/0"
    monkeypatch.delenv("LLM_ROUTER_TEST_REDIS_PW", raising=False)
    with pytest.raises(ValueError, match=r"ledger_password_env: .*LLM_ROUTER_TEST_REDIS_PW"):
        RouterConfig.from_dict(config(ledger=url, ledger_password_env="LLM_ROUTER_TEST_REDIS_PW"))
    monkeypatch.setenv("LLM_ROUTER_TEST_REDIS_PW", "")
    with pytest.raises(ValueError, match=r"ledger_password_env: .*LLM_ROUTER_TEST_REDIS_PW"):
        RouterConfig.from_dict(config(ledger=url, ledger_password_env="LLM_ROUTER_TEST_REDIS_PW"))
    monkeypatch.setenv("LLM_ROUTER_TEST_REDIS_PW", "s3cret")
    cfg = RouterConfig.from_dict(config(ledger=url, ledger_password_env="LLM_ROUTER_TEST_REDIS_PW"))
    assert cfg.ledger_password_env == "LLM_ROUTER_TEST_REDIS_PW"
    # A password is for Redis only: with the SQLite ledger it would be silently ignored.
    with pytest.raises(ValueError, match="ledger_password_env: "):
        RouterConfig.from_dict(config(ledger_password_env="LLM_ROUTER_TEST_REDIS_PW"))


@pytest.mark.parametrize("namespace", ["", "a{b", "a}b"])
def test_ledger_namespace_must_be_non_empty_without_braces(namespace: str) -> None:
    with pytest.raises(ValueError, match="ledger_namespace"):
        RouterConfig.from_dict(config(ledger="redis://127.0.0.1:6379/0", ledger_namespace=namespace))
