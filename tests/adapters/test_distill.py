"""Distillation's data, with a scripted teacher: no gold label is read, the confidence filter,
the cache that makes a run resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.adapters import distill as d
from gateway.evaluation.backends import Outcome

QUESTIONS = [
    ("Which organ makes insulin?", {"A": "Liver", "B": "Pancreas", "C": "Kidney"}),
    ("Which vessel leaves the left ventricle?", {"A": "Aorta", "B": "Vena cava", "C": "Vein"}),
    ("Which bone is in the thigh?", {"A": "Tibia", "B": "Radius", "C": "Femur"}),
]


class ScriptedTeacher:
    """Answers by the question's text alone; agreement falls with the question's length."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, route: str, variant: str, body: dict[str, Any], run_id: str) -> Outcome:
        self.calls += 1
        question = body["switchboard"]["question"]
        letter = "ABC"[len(question) % 3]
        votes = {"A": 0, "B": 0, "C": 0, letter: 5 if len(question) < 30 else 3}
        votes["A" if letter != "A" else "B"] += 5 - votes[letter]
        reply = f"Reasoning about it.\n\nAnswer: {letter}"
        return Outcome(
            "ok", inference_id=f"inf-{self.calls}", reply=reply, answer=letter, votes=votes
        )


def _write(path: Path, gold: str) -> Path:
    lines = [
        json.dumps({"question": q, "options": o, "answer": gold if gold else "A"})
        for q, o in QUESTIONS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _student(tmp_path: Path, name: str, gold: str) -> tuple[d.StudentData, ScriptedTeacher]:
    questions = d.read_questions(_write(tmp_path / f"{name}.jsonl", gold))
    teacher = ScriptedTeacher()
    out = tmp_path / name / "student"
    answers = await d.ask_teacher(teacher, "medqa:prompted", questions, d.cache_path(out))
    ordered = [answers[q.id] for q in questions]
    return d.student_data(ordered, 0.7, "answer-only"), teacher


async def test_gold_answers_are_never_read(tmp_path: Path) -> None:
    right, _ = await _student(tmp_path, "right", "B")
    wrong, _ = await _student(tmp_path, "wrong", "Z")  # every gold answer wrong (not even a letter)
    assert right.examples == wrong.examples and right.kept == wrong.kept


async def test_answers_below_the_vote_share_are_dropped(tmp_path: Path) -> None:
    data, _ = await _student(tmp_path, "q", "B")
    # The two short questions agree 5 of 5; the long one 3 of 5 (0.6 < 0.7).
    assert len(data.kept) == 2 and data.dropped == {"below_confidence": 1}
    example = data.examples[0]["messages"]
    assert example[0]["role"] == "user" and example[0]["content"].startswith(QUESTIONS[0][0])
    assert example[-1]["content"].startswith("Answer: ")


async def test_the_teachers_answers_are_cached_and_reused(tmp_path: Path) -> None:
    questions = d.read_questions(_write(tmp_path / "q.jsonl", "B"))
    cache = d.cache_path(tmp_path / "student")
    first = ScriptedTeacher()
    await d.ask_teacher(first, "medqa:prompted", questions[:2], cache)
    again = ScriptedTeacher()
    answers = await d.ask_teacher(again, "medqa:prompted", questions, cache)
    assert first.calls == 2 and again.calls == 1 and len(answers) == 3
    other = ScriptedTeacher()  # another teacher does not reuse these answers
    await d.ask_teacher(other, "medqa:cot", questions, cache)
    assert other.calls == 3


def test_with_reasoning_keeps_the_teachers_reply() -> None:
    got = d.TeacherAnswer("q1", "B", {"B": 5}, "Because insulin.\n\nAnswer: B", 1.0, [])
    data = d.student_data([got], 0.5, "with-reasoning")
    assert data.examples[0]["messages"][-1]["content"] == "Because insulin.\n\nAnswer: B"
