"""Profile sets (UniRoute): a few hundred representative prompts that describe any model by its answers on them.

K-means splits the history's query embeddings into K clusters; the profile set takes the prompts nearest each
centre, as many per cluster as its share of the history. A model the history does not know is then described by its
outcomes on the profile prompts (``llm-router onboard``), and the estimator reads its per-cluster means for queries
of each cluster (see :mod:`llm_router_plugin.estimator`).

A profile set is a JSONL file: a header line ``{"profile_set": 1, "embedding_model": ..., "centres": [[...], ...]}``
(the centres are in that embedder's space), then one line per prompt ``{"id", "prompt", "task", "cluster",
"reference"}``; ``id`` is the history record the prompt came from, ``reference`` an optional reference answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_router_plugin.dataset import bundled_path
from llm_router_plugin.embedding import Embedder, embedding_space

#: Version of the file format, in the header line.
PROFILE_FORMAT = 1
#: The profile set shipped with the package: built from the shipped RouterBench sample with the default embedder.
DEFAULT_PROFILE_SET = "routerbench_profile.jsonl"
#: History records K-means is fitted on at most (a seeded sample; every record is then assigned to its centre).
FIT_SAMPLE = 50_000


class ProfilePrompt(BaseModel):
    """One prompt of a profile set.

    Attributes:
        id: the history record it came from (outcomes on it are written there).
        prompt: the text sent to a model being profiled.
        task: the task label, if known.
        cluster: the K-means cluster it represents.
        reference: a reference answer, if known (a scorer may compare answers with it).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    task: str | None = None
    cluster: int = Field(ge=0)
    reference: str | None = None


@dataclass(frozen=True)
class ProfileSet:
    """The profile prompts and the cluster centres they were chosen from.

    Attributes:
        prompts: the prompts, grouped by cluster.
        centres: normalised cluster centres, shape ``(K, dimension)``.
        embedding_model: the name of the embedder the centres were computed with.
    """

    prompts: tuple[ProfilePrompt, ...]
    centres: np.ndarray
    embedding_model: str

    def __post_init__(self) -> None:
        if self.centres.ndim != 2 or not len(self.centres):
            raise ValueError("centres: need a (clusters, dimension) array with at least one cluster")
        if not np.isfinite(self.centres).all():
            raise ValueError("centres: every value must be a finite number")
        bad = [p.id for p in self.prompts if p.cluster >= len(self.centres)]
        if bad:
            raise ValueError(f"cluster: prompts {bad[:3]} name a cluster beyond the {len(self.centres)} centres")
        ids = [p.id for p in self.prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("id: every profile prompt needs its own id")

    @property
    def clusters(self) -> int:
        """K, the number of clusters."""
        return len(self.centres)

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """The nearest centre (by cosine) of each normalised embedding, shape ``(n,)``."""
        vectors = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        return np.argmax(vectors @ self.centres.T, axis=1)

    def for_embedder(self, embedder: Embedder) -> ProfileSet:
        """This set with its centres in ``embedder``'s space.

        The stored centres when ``embedder`` is the one they were computed with, or another run of its model (its int8
        weights: :func:`~llm_router_plugin.embedding.embedding_space`); else each cluster's centre is the
        normalised mean of its profile prompts' embeddings (a cluster without prompts gets a zero centre, which a
        query joins only if it is further from every other centre than orthogonal).
        """
        if embedding_space(embedder.name) == embedding_space(self.embedding_model):
            return self
        vectors = np.asarray(embedder.embed([p.prompt for p in self.prompts]), dtype=np.float32)
        labels = np.array([p.cluster for p in self.prompts], dtype=int)
        centres = np.zeros((self.clusters, vectors.shape[1]), dtype=np.float32)
        for cluster in np.unique(labels):
            mean = vectors[labels == cluster].mean(axis=0)
            centres[cluster] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return ProfileSet(self.prompts, centres, embedder.name)

    def find(self, key: str) -> ProfilePrompt | None:
        """The prompt with this id, else with exactly this text, else ``None``."""
        by_id = {p.id: p for p in self.prompts}
        if key in by_id:
            return by_id[key]
        return next((p for p in self.prompts if p.prompt == key), None)

    def save(self, path: str | Path) -> None:
        """Write the set as JSONL (see the module docstring)."""
        header = {"profile_set": PROFILE_FORMAT, "embedding_model": self.embedding_model,
                  "centres": np.round(self.centres.astype(float), 6).tolist()}
        lines = [json.dumps(header)] + [p.model_dump_json(exclude_none=True) for p in self.prompts]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ProfileSet:
        """Read a profile set file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a profile set (the message names the file and line).
        """
        path = Path(path)
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(f"profile_set: no such file {path}") from None
        if not lines:
            raise ValueError(f"profile_set: {path} is empty")
        header = _json_line(path, 1, lines[0])
        if header.get("profile_set") != PROFILE_FORMAT:
            raise ValueError(f"profile_set: {path} line 1 is not a profile set header (version {PROFILE_FORMAT})")
        try:
            centres = np.asarray(header["centres"], dtype=np.float32)
            embedding_model = str(header["embedding_model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"profile_set: {path} line 1 lacks valid 'centres' or 'embedding_model' ({exc})") from None
        prompts = []
        for number, line in enumerate(lines[1:], start=2):
            try:
                prompts.append(ProfilePrompt.model_validate(_json_line(path, number, line)))
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "line"
                raise ValueError(f"profile_set: {path} line {number}: {field}: {first['msg']}") from None
        try:
            return cls(tuple(prompts), centres, embedding_model)
        except ValueError as exc:
            raise ValueError(f"profile_set: {path}: {exc}") from None


def _json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile_set: {path} line {number} is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"profile_set: {path} line {number} is not a JSON object")
    return value


def default_profile_set() -> ProfileSet:
    """The profile set shipped with the package (see :data:`DEFAULT_PROFILE_SET`)."""
    return ProfileSet.load(bundled_path(DEFAULT_PROFILE_SET))


def kmeans_centres(embeddings: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """K-means centres of normalised embeddings (fitted on a seeded sample of at most :data:`FIT_SAMPLE`), normalised.

    Raises:
        ValueError: ``clusters`` is below 1 or above the number of embeddings.
    """
    from sklearn.cluster import KMeans

    vectors = np.asarray(embeddings, dtype=np.float32)
    if not 1 <= clusters <= len(vectors):
        raise ValueError(f"clusters: must be between 1 and the {len(vectors)} history records, got {clusters}")
    rng = np.random.default_rng(seed)
    sample = vectors if len(vectors) <= FIT_SAMPLE else vectors[rng.choice(len(vectors), FIT_SAMPLE, replace=False)]
    # Identical vectors (shared few-shot prefixes) can leave fewer distinct points than clusters: K-means then
    # returns duplicate centres, which is harmless (the first one wins every assignment).
    model = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(sample)
    centres = model.cluster_centers_.astype(np.float32)
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    return np.asarray(centres / np.maximum(norms, 1e-12), dtype=np.float32)


def quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Prompts per cluster: ``total`` split in proportion to ``sizes`` (largest remainders), at least one each.

    Clusters with no member get none; each gets at most its size.
    """
    sizes = np.asarray(sizes, dtype=int)
    nonempty = sizes > 0
    total = min(int(total), int(sizes.sum()))
    share = total * sizes / max(1, sizes.sum())
    out = np.where(nonempty, np.maximum(1, np.floor(share)), 0).astype(int)
    out = np.minimum(out, sizes)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while out.sum() < total and i < 10 * len(sizes) + total:
        c = order[i % len(order)]
        if out[c] < sizes[c]:
            out[c] += 1
        i += 1
    while out.sum() > total:  # the at-least-one floor overshot: trim the largest quotas
        out[int(np.argmax(out))] -= 1
    return out


def build_profile_set(
    ids: Sequence[str], embeddings: np.ndarray, texts: Sequence[str | None], tasks: Sequence[str | None], *,
    embedding_model: str, size: int = 200, clusters: int = 16, seed: int = 0,
) -> ProfileSet:
    """Cluster the history and pick the profile prompts nearest each centre, in proportion to cluster sizes.

    Records without a text cannot be sent to a model and are never picked; a text already picked is not picked again.

    Args:
        ids: history record ids.
        embeddings: their normalised embeddings, shape ``(n, dimension)``.
        texts: their prompt texts (``None`` where unknown).
        tasks: their task labels (``None`` where unknown).
        embedding_model: the embedder's name (stored with the centres).
        size: prompts in the set (N).
        clusters: K.
        seed: K-means seed.

    Returns:
        The profile set.

    Raises:
        ValueError: ``size`` or ``clusters`` below 1, inputs of different lengths, or no record has a text.
    """
    if size < 1:
        raise ValueError(f"size: must be at least 1, got {size}")
    if not len(ids) == len(embeddings) == len(texts) == len(tasks):
        raise ValueError("ids/embeddings/texts/tasks: need one of each per history record")
    usable = np.array([bool(t and t.strip()) for t in texts], dtype=bool)
    if not usable.any():
        raise ValueError("texts: no history record has a prompt text to profile with (import with store_prompts, "
                         "or pass the data file the history came from)")
    # Sorted by id, the result does not depend on the order a store returns its records in.
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    ids, texts, tasks = [ids[i] for i in order], [texts[i] for i in order], [tasks[i] for i in order]
    usable = usable[order]
    vectors = np.asarray(embeddings, dtype=np.float32)[order]
    centres = kmeans_centres(vectors, clusters, seed)
    label = np.argmax(vectors @ centres.T, axis=1)
    similarity = np.sum(vectors * centres[label], axis=1)
    sizes = np.bincount(label[usable], minlength=clusters)
    picked: list[ProfilePrompt] = []
    seen: set[str] = set()
    for cluster, quota in enumerate(quotas(sizes, size)):
        members = np.flatnonzero((label == cluster) & usable)
        for row in members[np.argsort(-similarity[members], kind="stable")]:
            if quota == 0:
                break
            text = str(texts[row])
            if text in seen:
                continue
            seen.add(text)
            picked.append(ProfilePrompt(id=str(ids[row]), prompt=text, task=tasks[row] or None, cluster=cluster))
            quota -= 1
    return ProfileSet(tuple(picked), centres, embedding_model)


def load_profile_set(path: Path | None) -> ProfileSet:
    """The profile set a config names (``profile_set``), else the shipped one.

    Raises:
        ValueError: the file cannot be read (named, with the reason).
    """
    if path is None:
        return default_profile_set()
    try:
        return ProfileSet.load(path)
    except FileNotFoundError as exc:  # a typo must stop the start; the message names the field and the file
        raise ValueError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"profile_set: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
