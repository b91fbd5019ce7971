"""``llm-router report`` on a router config, and the ``--proxy-config`` option's errors without LiteLLM.

``status --proxy-config`` and ``report --proxy-config`` on a LiteLLM proxy config are tested with the LiteLLM
integration (integrations/litellm/tests/unit/test_litellm_cli.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_router_plugin import Router
from llm_router_plugin.cli import app, load_config, main

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\nembedding_model: hashing-64\n"
        "deployments:\n"
        "  - {name: a, model: m1, token_budget: 5000, input_usd_per_mtok: 1, output_usd_per_mtok: 2}\n"
        "  - {name: b, model: m2, token_budget: 5000, input_usd_per_mtok: 1, output_usd_per_mtok: 2}\n"
    )
    return path


def test_report_prints_a_row_per_deployment_and_writes_every_number_and_a_plot(config: Path, tmp_path: Path) -> None:
    router = Router(load_config(config))
    recorded = router.route("what is the capital of France", deployments=["a"])
    router.record(recorded.id, 100, 50, cost_usd=0.002)
    router.feedback(recorded.id, 0.9)
    router.route("and of Spain", deployments=["b"])  # open
    out, plot = tmp_path / "out" / "report.json", tmp_path / "out" / "report.png"
    result = runner.invoke(app, ["report", "--config", str(config), "--json", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "2 decisions: 1 recorded, 1 open" in result.output
    assert next(line for line in result.output.splitlines() if line.startswith("a ")).split()[:5] == [
        "a", "1", "0", "0", "0.002"]
    numbers = json.loads(out.read_text())
    a, b = numbers["deployments"]
    assert (a["spent"], a["feedback"], a["mean_quality"]) == ({"tokens": 150, "usd": 0.002}, 1, 0.9)
    assert (b["statuses"], b["spent"]) == ({"open": 1}, {"tokens": 0, "usd": 0})
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"wrote {out}" in result.output and f"wrote {plot}" in result.output


def test_report_since_covers_later_decisions_only(config: Path) -> None:
    router = Router(load_config(config))
    router.route("what is the capital of France")
    result = runner.invoke(app, ["report", "--config", str(config), "--since", "2999-01-01"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("0 decisions: none since 2999-01-01 00:00:00")


@pytest.mark.parametrize("command", ["status", "report"])
def test_config_and_proxy_config_exclude_each_other(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Path, command: str
) -> None:
    monkeypatch.setattr(sys, "argv", ["llm-router", command, "--config", str(config), "--proxy-config", str(config)])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert (stopped.value.code, capsys.readouterr().err) == (
        2, "error: give --config or --proxy-config, not both\n")


@pytest.mark.parametrize("command", ["status", "report"])
def test_proxy_config_without_the_litellm_integration_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    monkeypatch.setitem(sys.modules, "llm_router_litellm", None)  # as if not installed: importing it fails
    result = runner.invoke(app, [command, "--proxy-config", str(tmp_path / "config.yaml")])
    assert result.exit_code == 2
    assert result.output == ("error: --proxy-config needs the LiteLLM integration: "
                             "pip install llm-router-plugin-litellm\n")
