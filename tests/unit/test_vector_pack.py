"""Vector packs: an import takes the packed vectors of its embedder and embeds only the other texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_router_plugin import HashingEmbedder, bundled_path, read_data
from llm_router_plugin.cli import app
from llm_router_plugin.vector_pack import PackedEmbedder, VectorPack, shipped_packs


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that keeps every text it was asked to embed, under a chosen name."""

    def __init__(self, dimension: int = 64, name: str | None = None) -> None:
        super().__init__(dimension)
        self._name = name
        self.seen: list[str] = []

    @property
    def name(self) -> str:
        return self._name or super().name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return super().embed(texts)


def test_packed_texts_are_not_embedded_again_and_rows_keep_their_order(tmp_path: Path) -> None:
    source = CountingEmbedder()
    pack = VectorPack.build(["alpha", "beta", "alpha"], source)
    assert len(pack.keys) == 2  # a repeated text is embedded once
    pack.save(tmp_path / "p.npz")
    inner = CountingEmbedder()
    packed = PackedEmbedder(inner, [VectorPack.load(tmp_path / "p.npz")])
    vectors = packed.embed(["beta", "gamma", "alpha"])
    assert inner.seen == ["gamma"]
    np.testing.assert_array_equal(vectors, source.embed(["beta", "gamma", "alpha"]))
    assert packed.embed([]).shape[0] == 0


def test_a_pack_of_another_embedder_is_never_mixed_in() -> None:
    pack = VectorPack.build(["alpha"], CountingEmbedder(name="other-model@tail"))
    inner = CountingEmbedder()
    PackedEmbedder(inner, [pack]).embed(["alpha"])
    assert inner.seen == ["alpha"]


@pytest.mark.parametrize("damage", ["not a zip", "norms", "keys"])
def test_a_damaged_pack_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "p.npz"
    pack = VectorPack.build(["alpha", "beta"], CountingEmbedder())
    if damage == "not a zip":
        path.write_text("hello")
    elif damage == "norms":
        VectorPack(pack.model, pack.keys, pack.vectors * 2).save(path)
    else:
        np.savez(path, model=np.array(pack.model), keys=np.array(["a", "b"]), vectors=pack.vectors)
    with pytest.raises(ValueError, match=r"p\.npz"):
        VectorPack.load(path)


def test_the_shipped_pack_holds_every_prompt_of_the_shipped_sample_for_the_default_embedder() -> None:
    prompts = [row.prompt for row in read_data(bundled_path()).rows]
    # Named like the default embedder: the import never loads the model for the shipped sample.
    inner = CountingEmbedder(384, name="all-MiniLM-L6-v2@tail")
    vectors = PackedEmbedder(inner, shipped_packs()).embed(prompts)
    assert inner.seen == [] and vectors.shape == (len(prompts), 384)


def test_the_vectors_command_writes_a_pack_that_import_reads(tmp_path: Path) -> None:
    data = tmp_path / "h.jsonl"
    data.write_text('{"prompt": "what is two plus two", "m": 1.0}\n{"prompt": "write a poem", "m": 0.5}\n')
    config = tmp_path / "router.yaml"
    config.write_text(f"data_dir: {tmp_path / 'd'}\nembedding_model: hashing-64\ndeployments: [{{name: m}}]\n")
    runner = CliRunner()
    made = runner.invoke(app, ["vectors", str(data), "-c", str(config), "--out", str(tmp_path / "h.npz")])
    assert made.exit_code == 0, made.output
    assert VectorPack.load(tmp_path / "h.npz").model == "hashing-64"
    imported = runner.invoke(app, ["import", str(data), "-c", str(config), "--vectors", str(tmp_path / "h.npz")])
    assert imported.exit_code == 0, imported.output
    assert "history now 2 records" in imported.output
