"""Profile sets: K-means clusters of history, prompts picked per cluster, the JSONL file and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import HashingEmbedder
from llm_router_plugin.embedding import INT8_SUFFIX
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet, build_profile_set, default_profile_set, quotas
from tests.conftest import TOPICS, topic_prompt


def _history(embedder: HashingEmbedder, sizes: dict[str, int]) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    ids, texts, tasks = [], [], []
    for topic, n in sizes.items():
        for i in range(n):
            ids.append(f"{topic}-{i}")
            texts.append(topic_prompt(topic, i))
            tasks.append(topic)
    return ids, embedder.embed(texts), texts, tasks


def test_prompts_are_spread_over_the_clusters_in_proportion_to_their_size(embedder: HashingEmbedder) -> None:
    ids, vectors, texts, tasks = _history(embedder, {"math": 60, "code": 30, "chat": 10})
    profile = build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, size=20, clusters=3)
    assert len(profile.prompts) == 20
    picked = {topic: sum(p.task == topic for p in profile.prompts) for topic in TOPICS}
    assert picked == {"math": 12, "code": 6, "chat": 2}
    # Each prompt is labelled with the cluster its topic fell in, and its id points back at the history record.
    assert all(profile.assign(embedder.embed([p.prompt]))[0] == p.cluster for p in profile.prompts)
    assert all(ids[texts.index(p.prompt)] == p.id for p in profile.prompts)


def test_records_without_text_and_repeated_texts_are_never_picked(embedder: HashingEmbedder) -> None:
    ids, vectors, texts, tasks = _history(embedder, {"math": 10, "code": 10})
    texts = [None if i % 2 else t for i, t in enumerate(texts)]
    texts[2] = texts[0]
    profile = build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, size=50, clusters=2)
    chosen = [p.prompt for p in profile.prompts]
    assert len(chosen) == len(set(chosen)) == 9  # 10 texts, one repeated
    with pytest.raises(ValueError, match="texts"):
        build_profile_set(ids, vectors, [None] * len(ids), tasks, embedding_model=embedder.name)
    with pytest.raises(ValueError, match="size"):
        build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, size=0)
    with pytest.raises(ValueError, match="clusters"):
        build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, clusters=10_000)


def test_the_result_does_not_depend_on_the_order_of_the_records(embedder: HashingEmbedder) -> None:
    ids, vectors, texts, tasks = _history(embedder, {"math": 30, "code": 20, "chat": 10})
    first = build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, size=12, clusters=3)
    order = np.random.default_rng(3).permutation(len(ids))
    second = build_profile_set([ids[i] for i in order], vectors[order], [texts[i] for i in order],
                               [tasks[i] for i in order], embedding_model=embedder.name, size=12, clusters=3)
    assert [p.id for p in first.prompts] == [p.id for p in second.prompts]


def test_quotas_sum_to_the_size_give_every_cluster_one_and_never_exceed_it() -> None:
    assert quotas(np.array([90, 9, 1, 0]), 10).tolist() == [8, 1, 1, 0]
    assert quotas(np.array([3, 2]), 100).tolist() == [3, 2]
    assert quotas(np.array([50, 50, 50]), 2).sum() == 2


def test_a_saved_set_loads_back_and_a_broken_file_names_its_line(tmp_path: Path, embedder: HashingEmbedder) -> None:
    ids, vectors, texts, tasks = _history(embedder, {"math": 10, "code": 10})
    profile = build_profile_set(ids, vectors, texts, tasks, embedding_model=embedder.name, size=6, clusters=2)
    path = tmp_path / "profile.jsonl"
    profile.save(path)
    loaded = ProfileSet.load(path)
    assert loaded.prompts == profile.prompts and loaded.embedding_model == embedder.name
    assert np.allclose(loaded.centres, profile.centres, atol=1e-5)

    lines = path.read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], lines[1], '{"id": "x", "prompt": "q", "cluster": 9}']))
    with pytest.raises(ValueError, match=r"bad\.jsonl"):
        ProfileSet.load(tmp_path / "bad.jsonl")
    (tmp_path / "nan.jsonl").write_text(json.dumps({**json.loads(lines[0]), "centres": [[float("nan")] * 4]}))
    with pytest.raises(ValueError, match="finite"):
        ProfileSet.load(tmp_path / "nan.jsonl")
    (tmp_path / "quality.jsonl").write_text("\n".join([lines[0], '{"id": "x", "prompt": "", "cluster": 0}']))
    with pytest.raises(ValueError, match="line 2: prompt"):
        ProfileSet.load(tmp_path / "quality.jsonl")
    with pytest.raises(ValueError, match="line 1"):
        (tmp_path / "header.jsonl").write_text('{"id": "x"}\n')
        ProfileSet.load(tmp_path / "header.jsonl")
    with pytest.raises(FileNotFoundError, match="profile_set"):
        ProfileSet.load(tmp_path / "missing.jsonl")


def test_another_embedder_gets_centres_from_the_profile_prompts(embedder: HashingEmbedder) -> None:
    profile = ProfileSet(
        (ProfilePrompt(id="a", prompt=TOPICS["math"], cluster=0),
         ProfilePrompt(id="b", prompt=TOPICS["chat"], cluster=1)),
        np.eye(2, 8, dtype=np.float32), "another-model",
    )
    moved = profile.for_embedder(embedder)
    assert moved.embedding_model == embedder.name and moved.centres.shape == (2, embedder.dimension)
    assert moved.assign(embedder.embed([topic_prompt("math", 3), topic_prompt("chat", 3)])).tolist() == [0, 1]
    assert profile.for_embedder(HashingEmbedder(8)) is not profile
    assert moved.for_embedder(embedder) is moved


def test_the_int8_run_of_the_model_keeps_the_stored_centres(embedder: HashingEmbedder) -> None:
    class Int8(HashingEmbedder):
        @property
        def name(self) -> str:
            return f"{super().name}{INT8_SUFFIX}"

    profile = ProfileSet((ProfilePrompt(id="a", prompt=TOPICS["math"], cluster=0),),
                         np.eye(1, embedder.dimension, dtype=np.float32), embedder.name)
    assert profile.for_embedder(Int8(embedder.dimension)) is profile  # one space: nothing to recompute


def test_the_shipped_set_covers_the_shipped_tasks() -> None:
    profile = default_profile_set()
    assert len(profile.prompts) == 200 and profile.clusters == 16
    assert {p.task for p in profile.prompts} == {"arc-challenge", "winogrande", "mbpp"}
    assert profile.embedding_model == "all-MiniLM-L6-v2@tail"


def test_the_build_command_profiles_the_history_in_use(tmp_path: Path, embedder: HashingEmbedder) -> None:
    import yaml
    from typer.testing import CliRunner

    from llm_router_plugin.cli import app

    data = tmp_path / "data.csv"
    rows = [f"{topic_prompt(t, i)},{t},,{t}-{i},1" for t in TOPICS for i in range(10)]
    data.write_text("prompt,eval_name,split,sample_id,some-model\n" + "\n".join(rows) + "\n")
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "embedding_model": embedder.name,
                                      "deployments": [{"name": "a", "model": "some-model"}]}))
    runner = CliRunner()
    empty = runner.invoke(app, ["profile", "build", "-c", str(config), "--out", str(tmp_path / "p.jsonl")])
    assert empty.exit_code == 2 and "history is empty" in empty.output
    assert runner.invoke(app, ["import", str(data), "-c", str(config)]).exit_code == 0
    # The store keeps no texts (store_prompts is off): they come from the data file the history was imported from.
    out = tmp_path / "p.jsonl"
    result = runner.invoke(app, ["profile", "build", "-c", str(config), "--data", str(data), "--size", "6",
                                 "--clusters", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = ProfileSet.load(out)
    assert len(profile.prompts) == 6 and profile.clusters == 3 and profile.embedding_model == embedder.name
    assert {p.task for p in profile.prompts} == set(TOPICS)


def test_a_profile_set_that_does_not_fit_the_router_is_named_in_the_error(
    tmp_path: Path, embedder: HashingEmbedder
) -> None:
    from llm_router_plugin import Router, RouterConfig

    narrow = ProfileSet((ProfilePrompt(id="a", prompt="q", cluster=0),), np.eye(1, 3, dtype=np.float32),
                        embedder.name)  # the router's embedder name, the wrong width
    narrow.save(tmp_path / "narrow.jsonl")
    base = {"data_dir": str(tmp_path / "d"), "embedding_model": embedder.name,
            "deployments": [{"name": "a", "model": "m"}]}
    router = Router(RouterConfig.from_dict({**base, "profile_set": str(tmp_path / "narrow.jsonl")}),
                    embedder=embedder)
    with pytest.raises(ValueError, match=r"profile_set.*dimension 3.*64"):
        router.route("a query")
    assert router.status().decisions == 0
    with pytest.raises(ValueError, match="profile_set"):
        Router(RouterConfig.from_dict({**base, "profile_set": str(tmp_path)}), embedder=embedder)  # a folder
