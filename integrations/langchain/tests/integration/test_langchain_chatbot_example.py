"""The chatbot example runs offline over the shipped RouterBench sample and reports every turn's routing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from llm_router_plugin import Router

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "langchain_chatbot.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("langchain_chatbot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_the_scripted_chat_routes_every_turn_and_spends_within_budgets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example()

    assert example.main(["--data-dir", str(tmp_path)]) == 0

    output = capsys.readouterr().out
    names = [d["name"] for d in example.DEPLOYMENTS]
    answered = re.findall(r"^([\w-]+) \((warmup|learned|fallback)\)> \[([\w-]+)\]", output, flags=re.MULTILINE)
    assert len(answered) == len(example.SCRIPT)
    assert all(deployment in names and child == deployment for deployment, _, child in answered)
    assert output.count("budget left: ") == len(example.SCRIPT)
    assert "thumbs-up recorded" in output

    router: Router = example.build_router(tmp_path)  # the same data dir: the ledger and log persist
    status = router.status()
    assert status.decisions == len(example.SCRIPT)
    assert sum(d.spent["usd"] for d in status.deployments) > 0
    assert all(d.reserved["usd"] == 0 and d.spent["usd"] <= d.limits["usd"] for d in status.deployments)
