import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_router_plugin import RouterStatus
from llm_router_plugin.cli import app, format_status, main
from llm_router_plugin.dataset import bundled_path
from llm_router_plugin.history import ChromaHistory
from llm_router_plugin.testing import LOOPBACK, free_port

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\nembedding_model: hashing-64\n"
        "deployments:\n  - {name: a, model: m1, token_budget: 5000}\n  - {name: b, model: m2, usd_budget: 1.0}\n"
    )
    return path


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "h.csv"
    rows = [f"question {i} about topic {i % 3},t,s,{i},{i % 2},0.001,0.5,0.0001" for i in range(30)]
    path.write_text("prompt,eval_name,split,sample_id,m1,m1|total_cost,m2,m2|total_cost\n" + "\n".join(rows) + "\n")
    return path


def test_import_status_route(config: Path, history: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["import", str(history), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "imported 30 new record(s)" in result.output
    assert re.search(r"\d+ records/s, \d+ records/s excluding embedding", result.output)
    assert (tmp_path / "data" / "embeddings.sqlite3").exists()  # a new import of these texts embeds none
    again = runner.invoke(app, ["import", str(history), "--config", str(config)])
    assert "imported 0 new record(s), 30 already present" in again.output

    routed = runner.invoke(app, ["route", "question 7 about topic 1", "--json", "--config", str(config)])
    assert routed.exit_code == 0, routed.output
    decision = json.loads(routed.output)
    assert {c["deployment"] for c in decision["candidates"]} == {"a", "b"}
    assert all(0 <= c["quality"] <= 1 for c in decision["candidates"])
    assert decision["score_formula"].startswith("warm-up")
    table = runner.invoke(app, ["route", "question 7 about topic 1", "--config", str(config)])
    assert "\nscore: warm-up (budget-paced greedy): quality ÷ " in table.stdout

    status = runner.invoke(app, ["status", "--json", "--config", str(config)])
    snapshot = json.loads(status.output)
    assert snapshot["history_size"] == 30
    # `route` is a dry run: its reservation is released, nothing is spent
    assert all(d["spent"]["tokens"] == 0 and d["reserved"]["tokens"] == 0 for d in snapshot["deployments"])
    table = runner.invoke(app, ["status", "--config", str(config)])
    assert "a" in table.output and "remaining" in table.output


def test_strict_import_refuses_bad_rows(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,m1\nok,1\nbroken,nan\n")
    result = runner.invoke(app, ["import", str(bad), "--strict", "--config", str(config)])
    assert result.exit_code == 1
    assert "1 row(s) rejected" in result.output and "nothing imported" in result.output


def test_route_empty_query_is_a_clear_error(config: Path, history: Path) -> None:
    runner.invoke(app, ["import", str(history), "--config", str(config)])
    result = runner.invoke(app, ["route", "   ", "--config", str(config)])
    assert result.exit_code == 2
    assert "no text" in result.output


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[object, str]:
    """Run the ``llm-router`` entry point with ``args``; its exit code and what it printed to stderr."""
    monkeypatch.setattr(sys, "argv", ["llm-router", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, capsys.readouterr().err


def test_missing_config_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run_main(monkeypatch, capsys, "status", "--config", str(tmp_path / "nope.yaml"))
    assert (code, err) == (2, f"error: no such config file: {tmp_path / 'nope.yaml'}\n")


def test_config_named_by_the_environment_must_exist(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./router.yaml to fall back to either
    monkeypatch.setenv("LLM_ROUTER_CONFIG", str(tmp_path / "typo.yaml"))
    code, err = run_main(monkeypatch, capsys, "status")
    assert (code, err) == (2, f"error: no such config file: {tmp_path / 'typo.yaml'}\n")


def test_broken_yaml_config_is_one_line_naming_file_and_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "router.yaml"
    broken.write_text("deployments:\n  - name: a\n   model: b\n", encoding="utf-8")
    code, err = run_main(monkeypatch, capsys, "status", "--config", str(broken))
    assert code == 2
    assert err.startswith(f"error: {broken}, line 3: invalid YAML (") and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_import_of_an_unreadable_data_file_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, kind: str
) -> None:
    data = tmp_path / "history.csv"
    if kind == "folder":
        data.mkdir()
    code, err = run_main(monkeypatch, capsys, "import", str(data), "--config", str(config))
    assert code == 2
    assert err.startswith("error: ") and str(data) in err and err.count("\n") == 1


def test_import_rejects_a_row_with_extra_cells_and_imports_the_rest(config: Path, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,m1,m2\nfirst question,1,0\nsecond, question,1,0\nthird question,0,1\n")
    result = runner.invoke(app, ["import", str(ragged), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "imported 2 new record(s)" in result.output
    assert "line 3: 1 cell(s) more than the header" in result.output


def test_a_truncated_ledger_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "data" / "ledger.sqlite3"
    ledger.parent.mkdir()
    ledger.write_bytes(b"")
    code, err = run_main(monkeypatch, capsys, "status", "--config", str(config))
    assert code == 2
    assert err.startswith(f"error: {ledger}: not a budget ledger ") and err.count("\n") == 1


def test_route_rejects_negative_prompt_tokens_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nembedding_model: hashing-64\nwarmup_queries: 3\n"
                    "deployments:\n  - {name: a, model: m1, token_budget: 5000}\n")
    for _ in range(4):
        result = runner.invoke(app, ["route", "hello there", "--prompt-tokens", "-1000", "--config", str(path)])
        assert result.exit_code == 2
        assert "prompt_tokens" in result.output
    ok = runner.invoke(app, ["route", "hello there", "--config", str(path)])
    assert ok.exit_code == 0, ok.output
    status = runner.invoke(app, ["status", "--json", "--config", str(path)])
    assert json.loads(status.output)["decisions"] == 0  # neither the refused routes nor the dry run count


def test_import_into_a_chroma_server_that_is_not_up_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, history: Path
) -> None:
    port = free_port()  # nothing listens there
    path = tmp_path / "router.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nembedding_model: hashing-64\nchroma_host: {LOOPBACK}\n"
                    f"chroma_port: {port}\ndeployments:\n  - {{name: a, model: m1}}\n")
    code, err = run_main(monkeypatch, capsys, "import", str(history), "--config", str(path))
    assert code == 2
    assert err.startswith("error: ") and f"{LOOPBACK}:{port}" in err and err.count("\n") == 1


def test_status_says_when_history_is_unreachable_and_what_waits_for_it() -> None:
    snapshot = RouterStatus(phase="warmup", mode="max_quality", decisions=4, next_solve_at=50, history_size=None,
                            history_pending=3, unsettled=0, mu=0.0, solve_notes=[], unknown_models=[],
                            deployments=[])
    assert "history unreachable, 3 outcome(s) queued for it" in format_status(snapshot)
    reachable = snapshot.model_copy(update={"history_size": 61, "history_pending": 0})
    assert "history 61 records" in format_status(reachable) and "queued" not in format_status(reachable)
    unsettled = reachable.model_copy(update={"unsettled": 2})
    assert "2 outcome(s) queued for the ledger" in format_status(unsettled)


def test_an_imported_history_serves_the_first_route_without_a_pass_over_it(
    config: Path, history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The records are put in the profile set's clusters as they are imported: labelling them at the first route
    # read every embedding back from Chroma (9 s and 1.4 GB at 100,000 records).
    assert runner.invoke(app, ["import", str(history), "--config", str(config)]).exit_code == 0

    def no_pass(*args: object) -> None:
        raise AssertionError("the first route read the whole history to label its clusters")

    monkeypatch.setattr(ChromaHistory, "_relabel", no_pass)
    routed = runner.invoke(app, ["route", "question 7 about topic 1", "--json", "--config", str(config)])
    assert routed.exit_code == 0, routed.output


def test_version_prints_the_installed_package_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"llm-router {version('llm-router-plugin')}\n"


def test_unknown_config_field_is_one_line_naming_file_and_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    typo = tmp_path / "router.yaml"
    typo.write_text("deployments:\n  - {name: a}\nwarmup_querys: 10\n", encoding="utf-8")
    code, err = run_main(monkeypatch, capsys, "status", "--config", str(typo))
    assert code == 2
    assert err == (f"error: {typo}: invalid router config: warmup_querys: unknown field (did you mean "
                   "'warmup_queries'?)\n")


def test_a_litellm_proxy_config_given_as_router_config_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    proxy = tmp_path / "config.yaml"
    proxy.write_text("model_list:\n  - model_name: chat\n    litellm_params: {model: openai/gpt-4o}\n"
                     "router_settings:\n  routing_strategy: simple-shuffle\n", encoding="utf-8")
    code, err = run_main(monkeypatch, capsys, "status", "--config", str(proxy))
    assert code == 2
    assert err.startswith(f"error: {proxy}: ") and err.count("\n") == 1
    assert "this looks like a LiteLLM proxy config: use --proxy-config" in err
    assert "Extra inputs" not in err


def shipped_config(tmp_path: Path, folder: str) -> Path:
    """The shipped default config (11 deployments, daily USD budgets) on a fresh data folder, hashing embeddings."""
    config = yaml.safe_load(bundled_path("default_router.yaml").read_text(encoding="utf-8"))
    config.update(data_dir=str(tmp_path / folder), embedding_model="hashing-256")
    path = tmp_path / f"{folder}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def dry_run(config: Path) -> dict[str, object]:
    result = runner.invoke(app, ["route", "Write a python function that reverses a list.", "--json", "-c",
                                 str(config)])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_dry_runs_leave_no_trace_and_do_not_change_the_next_decision(tmp_path: Path) -> None:
    used = shipped_config(tmp_path, "used")
    for _ in range(3):
        last = dry_run(used)
    fresh = dry_run(shipped_config(tmp_path, "fresh"))
    assert (last["deployment"], last["phase"], last["reason"]) == (fresh["deployment"], fresh["phase"],
                                                                  fresh["reason"])
    # Scores pace budgets by the time left in the day's window: the two routers ran a moment apart.
    assert [(c["deployment"], c["affordable"], pytest.approx(c["score"], rel=1e-3)) for c in last["candidates"]] == [
        (c["deployment"], c["affordable"], c["score"]) for c in fresh["candidates"]]
    snapshot = json.loads(runner.invoke(app, ["status", "--json", "-c", str(used)]).stdout)
    assert snapshot["decisions"] == 0
    assert all(not any(d["spent"].values()) and not any(d["reserved"].values()) for d in snapshot["deployments"])


def test_route_reads_the_query_from_standard_input(config: Path, history: Path) -> None:
    runner.invoke(app, ["import", str(history), "--config", str(config)])  # b's USD budget is priced from it
    long_text = "Summarise the following contract clause by clause.\n" + "The party of the first part agrees. " * 400
    piped = runner.invoke(app, ["route", "-", "--json", "-c", str(config)], input=long_text)
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["prompt_tokens"] > 1000  # the whole text, not the one-character argument "-"


@pytest.mark.parametrize("piped", ["", " \n\t\n"])
def test_route_from_empty_standard_input_is_a_clear_error(config: Path, piped: str) -> None:
    result = runner.invoke(app, ["route", "-", "-c", str(config)], input=piped)
    assert result.exit_code == 2
    assert "error: standard input holds no query text" in result.output
