"""Building an exemplar bank: MedPrompt's self-generated chain of thought.

The model answers labelled training questions with the pipeline's own zero-shot chain-of-thought
prompt; a reply is kept only if the letter it concludes with is the gold answer, and its
reasoning becomes the few-shot answer for that question. The questions are embedded and the
bank is written into the pipeline's folder (see ``gateway.pipelines.bank`` for the files).

Held-out items never enter a bank: the builder takes training items only and the writer and
the loader check the split again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.datasets import MCItem
from gateway.engines.target import Target
from gateway.errors import BuildError, GatewayError
from gateway.pipelines import prompt
from gateway.pipelines.answers import extract_answer
from gateway.pipelines.bank import Exemplar, write_bank
from gateway.pipelines.loader import Pipeline
from gateway.pipelines.responses import content_of
from gateway.pipelines.retrieval import Embedder


@dataclass
class Attempt:
    """One training question's outcome."""

    item: MCItem
    letter: str | None = None
    reasoning: str = ""
    error: str | None = None

    @property
    def kept(self) -> bool:
        return self.error is None and self.letter == self.item.answer and bool(self.reasoning)


@dataclass
class BuildReport:
    total: int
    kept: int
    answered: int
    failed: int
    skipped_heldout: int
    seconds: float
    jsonl: Path
    npy: Path


def training_items(items: Sequence[MCItem], limit: int | None) -> tuple[list[MCItem], int]:
    """The training-split items (first ``limit``), and how many held-out items were skipped."""
    train = [i for i in items if i.split == "train"]
    skipped = len(items) - len(train)
    return (train[:limit] if limit is not None else train), skipped


def generation_messages(pipeline: Pipeline, item: MCItem) -> list[dict[str, Any]]:
    """The zero-shot chain-of-thought prompt: the pipeline's templates without exemplars."""
    prefix = prompt.shared_prefix(pipeline, list(item.options), [])
    return prompt.member_messages(pipeline, prefix, item.question, item.options)


async def attempt(pipeline: Pipeline, target: Target, item: MCItem) -> Attempt:
    settings = pipeline.spec.exemplars
    body = {
        "messages": generation_messages(pipeline, item),
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
    }
    try:
        response = await target.chat(body)
    except GatewayError as exc:
        return Attempt(item, error=exc.message)
    text = content_of(response)
    found = extract_answer(text, item.options)
    if found is None:
        return Attempt(item)
    # The reasoning is what led to the answer phrase; the phrase itself is re-added by the
    # exemplar template in one fixed form ("Answer: X"), which is what the model should copy.
    reasoning = text[: found.phrase_start].strip()
    if len(reasoning) > settings.max_reasoning_chars:
        reasoning = ""
    return Attempt(item, found.letter, reasoning)


async def generate(
    pipeline: Pipeline,
    target: Target,
    items: Sequence[MCItem],
    *,
    concurrency: int,
    on_done: Callable[[Attempt], None] | None = None,
) -> list[Attempt]:
    """Run every item, ``concurrency`` at a time; results in the items' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: MCItem) -> Attempt:
        async with gate:
            result = await attempt(pipeline, target, item)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(i) for i in items)))


def write(
    pipeline: Pipeline,
    attempts: Sequence[Attempt],
    embedder: Embedder,
    *,
    meta: dict[str, Any],
) -> tuple[Path, Path, int]:
    """Embed the kept questions and write the bank into the pipeline's folder."""
    if pipeline.folder is None or pipeline.spec.retrieve is None:
        raise BuildError(f"the pipeline '{pipeline.name}' has no retrieve step to build a bank for")
    kept = [
        Exemplar(a.item.id, a.item.question, a.item.options, a.item.answer, a.reasoning)
        for a in attempts
        if a.kept
    ]
    if not kept:
        raise BuildError(
            "no reply reached its gold answer, so there is nothing to write; try more items "
            "(--limit) or a stronger model"
        )
    vectors = embedder.embed([e.question for e in kept])
    step = pipeline.spec.retrieve
    jsonl, npy = write_bank(
        pipeline.folder,
        kept,
        vectors,
        {**meta, "kept": len(kept), "embedder": step.embedder},
        jsonl_name=step.bank,
        npy_name=step.embeddings,
    )
    return jsonl, npy, len(kept)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_meta(
    *,
    pipeline: str,
    model: str,
    data: Path,
    limit: int | None,
    concurrency: int,
    total: int,
    skipped_heldout: int,
    started: float,
) -> dict[str, Any]:
    """How the bank was built, written beside it (no machine paths: the data file's name only)."""
    command = f"gateway exemplars build --pipeline {pipeline} --model {model} --data {data.name}"
    if limit is not None:
        command += f" --limit {limit}"
    command += f" --concurrency {concurrency}"
    return {
        "pipeline": pipeline,
        "model": model,
        "data": data.name,
        "data_sha256": file_digest(data),
        "limit": limit,
        "total": total,
        "skipped_heldout": skipped_heldout,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "command": command,
    }
