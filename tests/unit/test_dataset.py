import gzip
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from llm_router_plugin import (
    ChromaHistory,
    HashingEmbedder,
    HistoryFormatError,
    Router,
    bundled_path,
    import_history,
    read_data,
)
from llm_router_plugin.history import HistoryRecord

HEADER = "prompt,eval_name,split,sample_id,m1,m1|total_cost,m2\n"


def write(tmp_path: Path, body: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_reads_csv_with_missing_values(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, "q one,t,train,1,1.0,0.002,\nq two,t,test,2,,0.001,0.5\n"))
    assert data.models == ["m1", "m2"]
    first, second = data.rows
    assert first.outcomes["m1"].quality == 1.0 and first.outcomes["m1"].cost_usd == 0.002
    assert "m2" not in first.outcomes  # every m2 field is empty
    assert second.outcomes["m1"].quality is None and second.outcomes["m2"].quality == 0.5


@pytest.mark.parametrize("bad", ["nan", "inf", "1.5", "-0.1", "abc"])
def test_invalid_scores_reject_the_row_with_a_reason(tmp_path: Path, bad: str) -> None:
    data = read_data(write(tmp_path, f"good,t,s,1,1.0,0.1,0\nbad,t,s,2,{bad},0.1,0\n"))
    assert [r.prompt for r in data.rows] == ["good"]
    assert list(data.rejected) == [3]  # line numbers count the header
    assert "m1" in data.rejected[3]
    assert data.rejection_summary().startswith("1 row(s) rejected")


def test_negative_cost_is_rejected(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, "p,t,s,1,1.0,-3,0\n"))
    assert not data.rows and "m1|total_cost" in data.rejected[2]


def test_jsonl_with_same_fields(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"prompt": "x", "eval_name": "t", "m1": 0.25, "m1|completion_tokens": 7}) + "\n")
        fh.write("{not json\n")
    data = read_data(path)
    assert data.rows[0].outcomes["m1"].completion_tokens == 7
    assert "invalid JSON" in data.rejected[2]


def test_file_without_prompt_or_models(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("text,m1\nx,1\n")
    with pytest.raises(HistoryFormatError, match="prompt"):
        read_data(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("prompt,eval_name\nx,t\n")
    with pytest.raises(HistoryFormatError, match="no model columns"):
        read_data(tmp_path / "b.csv")


def test_import_is_idempotent_and_skips_rejected_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "a b c,t,s,1,1.0,0.1,0\nd e f,t,s,2,0.0,0.2,1\nbad,t,s,3,nan,0.1,1\n")
    store = ChromaHistory(tmp_path / "chroma")
    embedder = HashingEmbedder(16)
    first = import_history(read_data(path), store, embedder)
    assert (first.added, first.existing, first.rejected) == (2, 0, 1)
    again = import_history(read_data(path), store, embedder)
    assert (again.added, again.existing) == (0, 2)
    assert store.count() == 2
    means = store.profile_means(["m1", "m2"])
    assert means[0, 0] == pytest.approx(0.5)  # m1 quality over the two good rows
    assert means[1, 0] == pytest.approx(0.5)


def test_shipped_sample_parses() -> None:
    data = read_data(bundled_path())
    assert len(data.rows) == 3164 and len(data.models) == 11 and not data.rejected


def test_row_with_more_cells_than_the_header_is_rejected_alone(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, "a,t,s,1,1.0,0.1,0\nb,t,s,2,1.0,0.1,0,x,y,z\nc,t,s,3,0.5,0.1,1\n"))
    assert [r.prompt for r in data.rows] == ["a", "c"]
    assert data.rejected == {3: "3 cell(s) more than the header (7 columns)"}


def test_row_with_fewer_cells_than_the_header_has_missing_values(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, "a,t,s,1,0.5\n"))
    (row,) = data.rows
    assert row.outcomes["m1"].quality == 0.5 and row.outcomes["m1"].cost_usd is None
    assert "m2" not in row.outcomes


def test_rejections_name_the_physical_line_after_multi_line_prompts(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, '"first\nsecond\nthird",t,s,1,1.0,0.1,0\nbad,t,s,2,nan,0.1,0\n'))
    assert [r.prompt for r in data.rows] == ["first\nsecond\nthird"]
    assert list(data.rejected) == [5]  # header, three lines of the first prompt, then the bad row


def test_jsonl_values_that_are_not_objects_reject_their_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"prompt": "x", "m1": 1}\n3\n[1, 2]\nnull\n', encoding="utf-8")
    data = read_data(path)
    assert [r.prompt for r in data.rows] == ["x"]
    assert data.rejected == {2: "not a JSON object", 3: "not a JSON object", 4: "not a JSON object"}


def test_file_of_invalid_lines_names_no_internal_columns(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(HistoryFormatError, match=r"no 'prompt' column \(columns: \[\]\)"):
        read_data(path)


@pytest.mark.parametrize("kind", ["folder", "truncated gzip", "corrupt gzip"])
def test_unreadable_data_file_names_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "h.csv.gz"
    packed = gzip.compress((HEADER + "a,t,s,1,1.0,0.1,0\n" * 100).encode())
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated gzip":
        path.write_bytes(packed[:60])
    else:
        path.write_bytes(packed[:20] + bytes(b ^ 0xFF for b in packed[20:30]) + packed[30:])
    with pytest.raises(HistoryFormatError, match=f"^{re.escape(str(path))}: cannot read the data file "):
        read_data(path)


def test_missing_data_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^no such data file: {re.escape(str(tmp_path / 'h.csv'))}$"):
        read_data(tmp_path / "h.csv")


def stored_texts(store: ChromaHistory) -> list[str | None]:
    """The prompt texts the store keeps (``None`` where it keeps the embedding only)."""
    return list(store._collection.get(include=["documents"])["documents"] or [])


def test_import_keeps_prompt_texts_only_when_asked(tmp_path: Path) -> None:
    data = read_data(write(tmp_path, "a b c,t,s,1,1.0,0.1,0\nd e f,t,s,2,0.0,0.2,1\n"))
    private = ChromaHistory(tmp_path / "private")
    import_history(data, private, HashingEmbedder(16))
    assert stored_texts(private) == [None, None]
    kept = ChromaHistory(tmp_path / "kept")
    import_history(data, kept, HashingEmbedder(16), store_prompts=True)
    assert sorted(t or "" for t in stored_texts(kept)) == ["a b c", "d e f"]


class CountingEmbedder(HashingEmbedder):
    """Records every embedding call."""

    def __init__(self) -> None:
        super().__init__(16)
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().embed(texts)

    def embedded(self, prefix: str) -> list[str]:
        """The texts embedded that start with ``prefix`` (a router also embeds its profile set's prompts)."""
        return [text for call in self.calls for text in call if text.startswith(prefix)]


class CountingHistory(ChromaHistory):
    """Records the size of every write."""

    writes: list[int]

    def upsert(self, records: Sequence[HistoryRecord]) -> None:
        self.writes = [*getattr(self, "writes", []), len(records)]
        super().upsert(records)


def test_import_embeds_in_batches_and_writes_thousands_of_rows_per_call(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"question {i},t,s,{i},1.0,0.1,0\n" for i in range(1300)))
    store, embedder = CountingHistory(tmp_path / "chroma"), CountingEmbedder()
    report = import_history(read_data(path), store, embedder, batch_size=256, write_batch=1000)
    # Embedding batches never straddle a write batch.
    assert [len(call) for call in embedder.calls] == [256, 256, 256, 232, 256, 44]
    assert store.writes == [1000, 300]
    assert report.added == store.count() == 1300
    assert 0 < report.embedding_seconds <= report.seconds
    assert report.rate == pytest.approx(1300 / report.seconds)
    assert report.write_rate == pytest.approx(1300 / (report.seconds - report.embedding_seconds))


def test_an_import_that_adds_nothing_has_no_rate(tmp_path: Path) -> None:
    path = write(tmp_path, "a b c,t,s,1,1.0,0.1,0\n")
    store = ChromaHistory(tmp_path / "chroma")
    import_history(read_data(path), store, HashingEmbedder(16))
    again = import_history(read_data(path), store, HashingEmbedder(16))
    assert (again.added, again.rate, again.write_rate) == (0, 0.0, 0.0)


@pytest.mark.parametrize("field", ["batch_size", "write_batch"])
def test_import_batch_sizes_below_one_name_the_field(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "a b c,t,s,1,1.0,0.1,0\n")
    with pytest.raises(ValueError, match=field):
        import_history(read_data(path), ChromaHistory(tmp_path / "chroma"), HashingEmbedder(16),
                       **{field: 0})  # type: ignore[arg-type]


def test_router_import_into_a_new_data_dir_reads_the_shared_embedding_cache(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"question {i},t,s,{i},1.0,0.1,0\n" for i in range(40)))
    settings = {"deployments": [{"name": "a", "model": "m1"}], "embedding_cache": str(tmp_path / "shared.sqlite3")}
    first = CountingEmbedder()
    Router.from_config({**settings, "data_dir": str(tmp_path / "one")}, embedder=first).import_history(path)
    second = CountingEmbedder()
    router = Router.from_config({**settings, "data_dir": str(tmp_path / "two")}, embedder=second)
    report = router.import_history(path)
    assert (len(first.embedded("question ")), second.embedded("question "), report.added) == (40, [], 40)
    assert router.history.count() == 40


def test_router_import_caches_embeddings_in_its_data_dir_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, "a b c,t,s,1,1.0,0.1,0\n")
    Router.from_config({"deployments": [{"name": "a", "model": "m1"}], "data_dir": str(tmp_path / "data")},
                       embedder=CountingEmbedder()).import_history(path)
    assert (tmp_path / "data" / "embeddings.sqlite3").exists()


def stored_outcomes(store: ChromaHistory) -> list[dict[str, list[float]]]:
    from llm_router_plugin.history import decode_outcomes

    return [decode_outcomes(meta) for meta in store._collection.get(include=["metadatas"])["metadatas"] or []]


def test_import_with_prices_derives_completion_tokens_from_recorded_costs(tmp_path: Path) -> None:
    # A file that records costs but no token counts (RouterBench): without the completion tokens the cost implies,
    # every estimate would fall back to default_completion_tokens, whatever the model really answers.
    from llm_router_plugin.history import FIELDS
    from llm_router_plugin.pricing import Price

    prompt = "x" * 400  # about 100 tokens
    data = read_data(write(tmp_path, f"{prompt},t,s,1,1.0,0.0003,0\n"))
    priced = ChromaHistory(tmp_path / "priced")
    import_history(data, priced, HashingEmbedder(16), prices={"m1": Price(1.0, 2.0)})
    (outcomes,) = stored_outcomes(priced)
    fields = dict(zip(FIELDS, outcomes["m1"], strict=True))
    # 0.0003 USD = 100 prompt tokens at $1/M + 100 completion tokens at $2/M
    assert fields["prompt_tokens"] == 100 and fields["completion_tokens"] == 100
    unpriced = ChromaHistory(tmp_path / "unpriced")
    import_history(data, unpriced, HashingEmbedder(16))
    (outcomes,) = stored_outcomes(unpriced)
    assert np.isnan(dict(zip(FIELDS, outcomes["m1"], strict=True))["completion_tokens"])


def test_the_shipped_sample_is_imported_with_its_list_prices(tmp_path: Path) -> None:
    from llm_router_plugin.dataset import shipped_prices

    prices = shipped_prices(bundled_path())
    assert prices is not None and "gpt-4-1106-preview" in prices
    assert shipped_prices(tmp_path / "mine.csv") is None
