"""``llm-router profile run`` as a user runs it: a separate process against an in-process replay endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin.dataset import bundled_path, read_data
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet
from llm_router_plugin.replay import ReplayBook, ReplayServer

pytestmark = pytest.mark.integration
MODEL = "gpt-3.5-turbo-1106"


def llm_router(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("llm-router")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_profile_run_collects_recorded_answers_with_their_usage(tmp_path: Path) -> None:
    rows = [r for r in read_data(bundled_path()).rows if MODEL in r.outcomes][:6]
    profile = tmp_path / "profile.jsonl"
    ProfileSet(tuple(ProfilePrompt(id=f"r{i}", prompt=r.prompt, task=r.task, cluster=0) for i, r in enumerate(rows)),
               np.eye(1, 8, dtype=np.float32), "all-MiniLM-L6-v2").save(profile)
    out = tmp_path / "results.jsonl"
    book = ReplayBook.from_files()
    server = ReplayServer(book, port=0).start()
    try:
        done = llm_router("profile", "run", "--base-url", server.url, "--model", MODEL, "--profile", str(profile),
                          "--out", str(out), "--input-usd-per-mtok", "1", "--output-usd-per-mtok", "2",
                          "--scorer", "none")
        bad = llm_router("profile", "run", "--base-url", "127.0.0.1:1", "--model", MODEL, "--profile",
                         str(profile), "--out", str(tmp_path / "other.jsonl"))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "answered 6, failed 0, scored 0, skipped 0" in done.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == [f"r{i}" for i in range(6)]
    for line in lines:
        reply = book.reply(MODEL, [{"role": "user", "content": rows[int(line["id"][1:])].prompt}])
        assert (line["answer"], line["prompt_tokens"], line["completion_tokens"]) == (
            reply.text, reply.prompt_tokens, reply.completion_tokens)
        assert line["cost_usd"] == pytest.approx((reply.prompt_tokens * 1 + reply.completion_tokens * 2) / 1e6)
        assert line["quality"] is None and line["error"] is None
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: base_url: must be an http(s) URL") and bad.stderr.count("\n") == 1
