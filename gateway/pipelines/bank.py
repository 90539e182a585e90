"""An exemplar bank: solved training questions with their reasoning, and their embeddings.

On disk, in the pipeline's folder: ``exemplars.jsonl`` (one exemplar a line: the labelled
multiple-choice fields plus ``reasoning``), ``exemplars.npy`` (float32, one normalised row per
line, in the same order), ``exemplars.meta.json`` (how the bank was built) and
``exemplars.learned.json`` (the exemplars' content ids, which evaluations leave out).

Only training items may be exemplars: loading checks every id against the fixed split in
``gateway.datasets`` and refuses a bank with a held-out item, so evaluation on the held-out
side can never be contaminated by the few-shot prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.datasets import parse_item, split_of
from gateway.errors import BankError, DataError
from gateway.learned import Learned, bank_record_path, mc_content_id, write_learned
from gateway.pipelines.retrieval import (
    BruteForceIndex,
    VectorIndex,
    Vectors,
    question_key,
)


@dataclass(frozen=True)
class Exemplar:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    reasoning: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "options": self.options,
            "answer": self.answer,
            "reasoning": self.reasoning,
        }


@dataclass
class ExemplarBank:
    exemplars: list[Exemplar]
    index: VectorIndex
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [question_key(e.question) for e in self.exemplars]

    def __len__(self) -> int:
        return len(self.exemplars)


def load_bank(jsonl: Path, npy: Path, *, dim: int) -> ExemplarBank:
    exemplars = read_exemplars(jsonl)
    try:
        vectors = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BankError(f"{npy}: cannot load the embeddings: {exc}") from None
    if vectors.ndim != 2 or vectors.shape != (len(exemplars), dim):
        raise BankError(
            f"{npy}: embeddings have shape {vectors.shape}; {jsonl.name} has "
            f"{len(exemplars)} exemplars of dimension {dim}. Fix: rebuild the bank with "
            "`gateway exemplars build`."
        )
    if vectors.dtype != np.float32:
        raise BankError(f"{npy}: embeddings must be float32, not {vectors.dtype}")
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise BankError(f"{npy}: embeddings must be L2-normalised rows")
    return ExemplarBank(exemplars, BruteForceIndex(vectors))


def read_exemplars(path: Path) -> list[Exemplar]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BankError(
            f"{path}: cannot read the exemplar bank ({exc.strerror}). Fix: build it with "
            "`gateway exemplars build`."
        ) from None
    exemplars: list[Exemplar] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = parse_item(line, where)
        except DataError as exc:
            raise BankError(str(exc)) from None
        reasoning = json.loads(line).get("reasoning")
        if not isinstance(reasoning, str) or not reasoning.strip():
            raise BankError(f"{where}: 'reasoning' must be a non-empty string")
        if split_of(item.id) != "train":
            raise BankError(
                f"{where}: '{item.id}' is a held-out item; exemplar banks take training items "
                "only. Fix: rebuild the bank from `gateway data import ... --split train`."
            )
        if item.id in seen:
            raise BankError(f"{where}: duplicate id '{item.id}'")
        seen.add(item.id)
        exemplars.append(Exemplar(item.id, item.question, item.options, item.answer, reasoning))
    return exemplars


def write_bank(
    folder: Path,
    exemplars: Sequence[Exemplar],
    vectors: Vectors,
    meta: dict[str, Any],
    *,
    jsonl_name: str = "exemplars.jsonl",
    npy_name: str = "exemplars.npy",
) -> tuple[Path, Path]:
    """Write the three files, each to a temporary name first and then renamed into place."""
    for exemplar in exemplars:
        if split_of(exemplar.id) != "train":
            raise BankError(f"'{exemplar.id}' is a held-out item and cannot be an exemplar")
    if vectors.shape[0] != len(exemplars):
        raise BankError("one embedding row per exemplar is needed")
    jsonl, npy = folder / jsonl_name, folder / npy_name
    meta_path = folder / (Path(jsonl_name).stem + ".meta.json")
    tmp_jsonl = folder / f".{jsonl_name}.tmp"
    tmp_jsonl.write_text(
        "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in exemplars),
        encoding="utf-8",
    )
    tmp_npy = folder / f".{npy_name}.tmp.npy"
    np.save(tmp_npy, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    tmp_meta = folder / f".{meta_path.name}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp_jsonl.replace(jsonl)
    tmp_npy.replace(npy)
    tmp_meta.replace(meta_path)
    # What the bank prompts with, by content, for evaluations to leave out (gateway/learned.py).
    ids = frozenset(mc_content_id(e.question, e.options) for e in exemplars)
    source = meta.get("data") if isinstance(meta.get("data"), str) else None
    write_learned(bank_record_path(jsonl), Learned("bank", folder.name, ids, source))
    return jsonl, npy
