"""Retrieval latency: exact kNN over synthetic banks of 10k and 100k exemplars, and the query
embedding with all-MiniLM-L6-v2.

The bank rows are random unit vectors of the model's dimension (384): the search cost does not
depend on what the vectors mean. Each query is a fresh random unit vector; the timed call is
``nearest()``, the function the pipeline runner uses (search + duplicate exclusion).

    python bench/retrieval_bench.py --sizes 10000 100000 --queries 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gateway.pipelines.retrieval import (
    EMBEDDING_DIM,
    BruteForceIndex,
    SentenceTransformerEmbedder,
    nearest,
)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def search_times(index: BruteForceIndex, queries: np.ndarray, k: int) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        nearest(index, query[None, :], k)
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def embed_times(embedder: SentenceTransformerEmbedder, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        embedder.embed([text])
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def summary(values: list[float]) -> str:
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"{statistics.median(values):.2f} | {p95:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - comes with sentence-transformers
        threadpool_limits = None

    print("| bank size | BLAS threads | median ms | p95 ms |")
    print("|---:|---|---:|---:|")
    for size in args.sizes:
        index = BruteForceIndex(unit_rows(rng, size))
        queries = unit_rows(rng, args.queries)
        search_times(index, queries[:10], args.k)  # warm caches
        print(f"| {size:,} | default | {summary(search_times(index, queries, args.k))} |")
        if threadpool_limits is not None:
            with threadpool_limits(limits=1):
                print(f"| {size:,} | 1 | {summary(search_times(index, queries, args.k))} |")

    embedder = SentenceTransformerEmbedder(threads=1)
    started = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - started
    texts = [f"Which nerve supplies muscle number {i} of the forearm?" for i in range(args.queries)]
    embed_times(embedder, texts[:5])
    spread = summary(embed_times(embedder, texts[:100]))
    print(
        f"\nQuery embedding (all-MiniLM-L6-v2, 1 torch thread): {spread} (median | p95 ms); "
        f"model load {load_s:.1f} s including imports."
    )


if __name__ == "__main__":
    main()
