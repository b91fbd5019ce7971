"""``llm-router status --proxy-config`` and ``llm-router report --proxy-config`` on a LiteLLM proxy's config.yaml.

The proxy keeps one ledger and decision log per routed model group under ``<data_dir>/litellm/``: the commands read
those, through the routers the proxy builds from the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_router_litellm import LiteLLMAdapter
from router_litellm_support import CHAT, MATH, routed, seed_history, two_groups
from typer.testing import CliRunner

from llm_router_plugin import RouterStatus
from llm_router_plugin.cli import app

runner = CliRunner()


@pytest.fixture
def proxy_config(tmp_path: Path, settings: dict[str, Any]) -> Path:
    """A proxy config.yaml with routed groups "chat" and "code" and an unrouted "other"."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": two_groups(), "callback_settings": {"llm_router": settings}}),
                    encoding="utf-8")
    return path


@pytest.fixture
def served(proxy_config: Path) -> LiteLLMAdapter:
    """The proxy's adapter after three chat requests (two answered, one scored; one failed) and one code request
    still in flight."""
    adapter = LiteLLMAdapter.from_proxy_config(proxy_config)
    seed_history(adapter)
    chat = adapter.router("chat")
    assert chat is not None
    for i, quality in enumerate((0.5, None)):
        decision = routed(adapter, "chat", f"{MATH} {i}")
        chat.record(decision, 100, 200, cost_usd=0.003)
        if quality is not None:
            chat.feedback(decision, quality)
    chat.record(routed(adapter, "chat", CHAT), 0, 0, error="upstream timeout")
    routed(adapter, "code", MATH)
    return adapter


def test_status_shows_every_routed_groups_spend_and_changes_nothing(
    served: LiteLLMAdapter, proxy_config: Path
) -> None:
    chat = served.router("chat")
    assert chat is not None
    before = chat.status()
    table = runner.invoke(app, ["status", "--proxy-config", str(proxy_config)])
    assert table.exit_code == 0, table.output
    assert table.output.index("== model group chat ==") < table.output.index("== model group code ==")
    assert "other" not in table.output  # not routed
    as_json = runner.invoke(app, ["status", "--proxy-config", str(proxy_config), "--json"])
    groups = {group: RouterStatus.model_validate(s) for group, s in json.loads(as_json.output).items()}
    assert list(groups) == ["chat", "code"]
    spent = {d.name: d.spent["usd"] for d in groups["chat"].deployments}
    assert sum(spent.values()) == pytest.approx(0.006)  # what the proxy spent, not the 0 of another ledger
    assert (groups["chat"].decisions, groups["code"].decisions) == (3, 1)
    assert sum(d.reserved["tokens"] for d in groups["code"].deployments) > 0  # the code call is still held
    assert chat.status() == before  # no decision made, nothing reserved or released


def test_report_covers_every_routed_group_with_its_json_and_plot(
    served: LiteLLMAdapter, proxy_config: Path, tmp_path: Path
) -> None:
    out, plot = tmp_path / "report.json", tmp_path / "report.png"
    result = runner.invoke(app, ["report", "--proxy-config", str(proxy_config), "--json", str(out),
                                 "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "== model group chat ==\n3 decisions: 2 recorded, 1 failed" in result.output
    assert "== model group code ==\n1 decisions: 1 open" in result.output
    numbers = json.loads(out.read_text())
    assert list(numbers) == ["chat", "code"]
    chat = numbers["chat"]
    assert sum(d["spent"]["usd"] for d in chat["deployments"]) == pytest.approx(0.006)
    assert [d["mean_quality"] for d in chat["deployments"] if d["feedback"]] == [0.5]
    assert [c["status"] for c in chat["calls"]] == ["recorded", "recorded", "failed"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    code = served.router("code")
    assert code is not None and code.decisions.count() == 1  # the report made no decision


def test_a_proxy_config_without_a_routed_group_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [two_groups()[2]]}), encoding="utf-8")  # "other" only
    result = runner.invoke(app, ["status", "--proxy-config", str(path)])
    assert result.exit_code == 2
    assert result.output == f"error: {path}: no routed model group (no deployment has a model_info.llm_router block)\n"
