"""kNN retrieval: the true nearest neighbours, never the query itself; the real embedder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipelines.retrieval import (
    BruteForceIndex,
    SentenceTransformerEmbedder,
    Vectors,
    nearest,
    question_key,
)


def _unit_rows(seed: int, n: int, dim: int) -> Vectors:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    unit: Vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    dim=st.sampled_from([2, 8, 384]),
    k=st.integers(1, 12),
)
def test_index_returns_the_exact_k_nearest(seed: int, n: int, dim: int, k: int) -> None:
    vectors = _unit_rows(seed, n, dim)
    query = _unit_rows(seed + 1, 1, dim)
    scores, ids = BruteForceIndex(vectors).search(query, k)
    sims = vectors @ query[0]
    top = min(k, n)
    assert ids.shape == scores.shape == (1, top)
    assert len(set(ids[0].tolist())) == top
    # The k best similarities, best first, and each id really has the similarity reported.
    np.testing.assert_allclose(scores[0], np.sort(sims)[::-1][:top], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sims[ids[0]], scores[0], rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 200), k=st.integers(1, 10))
def test_nearest_never_returns_the_query_itself(seed: int, n: int, k: int) -> None:
    vectors = _unit_rows(seed, n, 16)
    pick = seed % n
    query = vectors[pick : pick + 1].copy()
    hits = nearest(BruteForceIndex(vectors), query, k)
    rows = [h.row for h in hits]
    assert pick not in rows
    others = [i for i in np.argsort(-(vectors @ query[0]), kind="stable") if i != pick]
    assert rows == [int(i) for i in others[: min(k, n - 1)]]
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_an_exact_duplicate_by_text_is_excluded_even_if_its_vector_differs() -> None:
    vectors = _unit_rows(7, 5, 8)
    keys = [question_key(t) for t in ["What is  X?", "b", "c", "d", "e"]]
    query: Vectors = vectors[0:1] * 0.9 + vectors[1:2] * 0.1
    query /= np.linalg.norm(query)
    hits = nearest(
        BruteForceIndex(vectors), query, 3, keys=keys, query_key=question_key("what is x?")
    )
    assert 0 not in [h.row for h in hits]
    assert len(hits) == 3


def test_k_larger_than_the_bank_returns_everything_else() -> None:
    vectors = _unit_rows(3, 4, 8)
    assert len(nearest(BruteForceIndex(vectors), _unit_rows(9, 1, 8), 10)) == 4
    assert nearest(BruteForceIndex(np.zeros((0, 8), np.float32)), _unit_rows(9, 1, 8), 3) == []


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder(threads=1)
    model.load()
    return model


def test_real_embedder_gives_normalised_rows_and_finds_the_related_question(
    embedder: SentenceTransformerEmbedder,
) -> None:
    bank = [
        "Which vessel carries oxygenated blood from the lungs to the heart?",
        "What is the powerhouse of the cell?",
        "Which bone is the longest in the human body?",
        "What causes a myocardial infarction?",
    ]
    vectors = embedder.embed(bank)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    query = embedder.embed(["What blocks the coronary arteries in a heart attack?"])
    hits = nearest(BruteForceIndex(vectors), query, 2)
    assert hits[0].row == 3
    # The same question asked again is the query itself, however it is spaced or cased.
    again = embedder.embed(["what is the POWERHOUSE of the   cell?"])
    assert 1 not in [h.row for h in nearest(BruteForceIndex(vectors), again, 3)]
