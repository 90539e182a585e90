"""Distillation: a prompted teacher's confident answers become a student adapter's training data.

``gateway adapters distill`` runs the teacher (a route's variant, by the live code path: the
evaluation backends' ``call``) on unlabelled questions, or reads its captured answers; keeps
the answers whose ensemble agreement (the winner's vote share) reaches ``--min-confidence``;
and trains the student through ``adapters.training`` on them. No gold label is ever read: a
question's ``answer`` field is not even parsed (``read_questions``), so a file whose answers are
all wrong yields the same student data.

Resumable: every teacher answer is appended (fsynced) to ``<out>.teacher.jsonl`` beside the
output and reused by the same teacher on the same question. The manifest's ``distillation``
records the teacher, the filter, the counts kept and dropped (and why) and the data's hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from gateway.adapters.manifest import MANIFEST
from gateway.adapters.training_data import mc_prompt
from gateway.datasets import split_of
from gateway.errors import DataError
from gateway.learned import mc_content_id
from gateway.pipelines.answers import extract_answer

Style = Literal["answer-only", "with-reasoning"]


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    options: dict[str, str]

    def request(self, route: str) -> dict[str, Any]:
        """As ``gateway eval`` sends an item: the student is trained on this exact prompt."""
        return {
            "model": route,
            "messages": [{"role": "user", "content": mc_prompt(self.question, self.options)}],
            "switchboard": {"question": self.question, "options": dict(self.options)},
        }


@dataclass(frozen=True)
class TeacherAnswer:
    id: str
    answer: str | None
    votes: dict[str, int] | None
    reply: str
    #: the winner's share of the votes (None for a teacher that casts no votes)
    confidence: float | None
    messages: list[dict[str, str]]
    inference_id: str | None = None
    status: str = "ok"


@dataclass
class StudentData:
    examples: list[dict[str, Any]]
    kept: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    #: questions left out before the teacher ran (the fixed split's held-out side)
    held_out: int = 0


class Teacher(Protocol):
    """What distillation asks of a gateway (``evaluation.backends.Backend`` is one)."""

    async def call(self, route: str, variant: str, body: dict[str, Any], run_id: str) -> Any: ...


# -- questions ----------------------------------------------------------------------------------


def read_questions(path: Path) -> list[Question]:
    """Unlabelled multiple-choice questions (``question``, ``options``; ``id`` optional).

    Any ``answer`` in the file is not read: distillation has no gold labels.
    """
    found: list[Question] = []
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from None
        question, options = data.get("question"), data.get("options")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(options, dict) or len(options) < 2:
            raise DataError(f"{where}: 'options' must map 2 or more letters to their texts")
        options = {str(k): str(v) for k, v in options.items()}
        qid = data.get("id") if isinstance(data.get("id"), str) else None
        found.append(Question(qid or mc_content_id(question, options), question, options))
    if not found:
        raise DataError(f"{path}: no questions")
    return found


def train_side(questions: Sequence[Question], split: str) -> tuple[list[Question], int]:
    """The train side of the fixed split (as ``gateway adapters train`` takes), so that a
    student is never taught the held-out questions it is evaluated on."""
    if split == "all":
        return list(questions), 0
    kept = [q for q in questions if split_of(q.id) == "train"]
    return kept, len(questions) - len(kept)


# -- the teacher --------------------------------------------------------------------------------


def cache_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.teacher.jsonl")


def load_cache(path: Path, teacher: str) -> dict[str, TeacherAnswer]:
    found: dict[str, TeacherAnswer] = {}
    if not path.exists():
        return found
    for line in path.read_text("utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill: asked again
        if isinstance(data, dict) and data.get("teacher") == teacher and data.get("status") == "ok":
            data.pop("teacher")
            found[str(data["id"])] = TeacherAnswer(**data)
    return found


def vote_share(answer: str | None, votes: Mapping[str, int] | None) -> float | None:
    if answer is None or not votes:
        return None
    cast = sum(votes.values())
    return round(votes.get(answer, 0) / cast, 4) if cast else None


async def ask_teacher(
    teacher: Teacher,
    spec: str,
    questions: Sequence[Question],
    cache: Path,
    *,
    concurrency: int = 2,
    on_answer: Callable[[TeacherAnswer, bool], None] | None = None,
) -> dict[str, TeacherAnswer]:
    """Every question's teacher answer: from the cache, else asked (and cached at once)."""
    route, variant = parse_teacher(spec)
    answers = load_cache(cache, spec)
    for q in questions:
        if q.id in answers and on_answer is not None:
            on_answer(answers[q.id], True)
    queue = [q for q in questions if q.id not in answers]
    run_id = "distill-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a", encoding="utf-8") as handle:

        async def worker() -> None:
            while queue:
                q = queue.pop(0)
                body = q.request(route)
                outcome = await teacher.call(route, variant, body, run_id)
                votes = dict(outcome.votes) if outcome.votes else None
                got = TeacherAnswer(
                    id=q.id,
                    answer=outcome.answer,
                    votes=votes,
                    reply=outcome.reply or "",
                    confidence=vote_share(outcome.answer, votes),
                    messages=body["messages"],
                    inference_id=outcome.inference_id,
                    status=outcome.status,
                )
                if got.status == "ok":
                    answers[q.id] = got
                    record = {"teacher": spec, **got.__dict__}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                if on_answer is not None:
                    on_answer(got, False)

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(queue)))):
                group.create_task(worker())
    return answers


def parse_teacher(spec: str) -> tuple[str, str]:
    route, sep, variant = spec.partition(":")
    if not sep or not route or not variant:
        raise DataError(f"--teacher '{spec}': write ROUTE:VARIANT, e.g. medqa:prompted")
    return route, variant


def from_captures(rows: Sequence[Mapping[str, Any]]) -> list[TeacherAnswer]:
    """Captured answers (``capture_export.select_captures``) as teacher answers."""
    found = []
    for row in rows:
        messages = [m for m in row["messages"] if m.get("role") in ("system", "user")]
        found.append(
            TeacherAnswer(
                id=str(row["id"]),
                answer=row.get("answer"),
                votes=None,
                reply=str(row.get("response") or ""),
                confidence=row.get("confidence"),
                messages=messages,
                inference_id=str(row["id"]),
            )
        )
    return found


# -- the student's data -------------------------------------------------------------------------


def student_data(
    answers: Sequence[TeacherAnswer], min_confidence: float | None, style: Style
) -> StudentData:
    """The kept answers as chat examples; what is dropped is counted by reason."""
    data = StudentData([], [])
    for got in answers:
        reason = _dropped(got, min_confidence)
        if reason is not None:
            data.dropped[reason] = data.dropped.get(reason, 0) + 1
            continue
        assert got.answer is not None
        reply = f"Answer: {got.answer}"
        if style == "with-reasoning" and got.reply.strip():
            reply = got.reply.strip()
            found = extract_answer(reply, {got.answer: got.answer})
            if found is None or found.letter != got.answer:
                reply += f"\n\nAnswer: {got.answer}"
        data.examples.append({"messages": [*got.messages, {"role": "assistant", "content": reply}]})
        data.kept.append(got.id)
    return data


def _dropped(got: TeacherAnswer, min_confidence: float | None) -> str | None:
    if got.answer is None:
        return "no_answer"
    if min_confidence is None or min_confidence <= 0:
        return None
    if got.confidence is None:
        return "no_confidence"
    return "below_confidence" if got.confidence < min_confidence else None


def write_student_data(path: Path, data: StudentData) -> str:
    """The training file (OpenAI's chat format); returns its sha256."""
    if not data.examples:
        raise DataError(
            f"no teacher answer was kept ({data.dropped}); lower --min-confidence or give more "
            "questions"
        )
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in data.examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def record_lineage(out: Path, lineage: dict[str, Any]) -> None:
    """Add ``distillation`` to the trained adapter's manifest (rewritten atomically)."""
    path = out / MANIFEST
    manifest = yaml.safe_load(path.read_text("utf-8"))
    manifest["distillation"] = lineage
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100), encoding="utf-8")
    tmp.replace(path)
