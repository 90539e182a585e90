"""Calibration and the cascade sweep, from records as `gateway eval` writes them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.evaluation.calibration import calibration, cascade_sweep


def _voted(item: str, share: int, correct: bool) -> dict[str, Any]:
    votes = {"A": share, "B": 5 - share}
    return {"item": item, "status": "ok", "extracted": "A", "votes": votes, "correct": correct}


def test_a_calibrated_variant_has_no_gap() -> None:
    rows = [_voted(f"q{i}", 4, i < 4) for i in range(5)]  # 0.8 confident, 4 of 5 right
    found = calibration(rows)
    assert found["n"] == 5 and found["ece"] == pytest.approx(0.0)
    assert found["bins"] == [{"range": [0.8, 0.9], "n": 5, "confidence": 0.8, "accuracy": 0.8}]


def test_an_overconfident_variant_shows_its_gap() -> None:
    rows = [_voted(f"q{i}", 5, i < 2) for i in range(4)]  # always sure, half right
    assert calibration(rows)["ece"] == pytest.approx(0.5)
    assert calibration([{"status": "ok", "correct": True}])["n"] == 0  # no votes: no confidence


def _cascade(item: str, conf: float, first: str, last: str | None) -> dict[str, Any]:
    steps = [
        {"variant": "tuned", "answer": first, "confidence": conf, "calls": 1, "cost": 1.0,
         "rule": {"answer_prob": 0.5}},
    ]  # fmt: skip
    if last is not None:
        steps.append(
            {"variant": "prompted", "answer": last, "confidence": 1, "calls": 5, "cost": 10.0}
        )
    return {"item": item, "status": "ok", "expected": "A", "steps": steps, "correct": None}


def test_the_sweep_replays_the_cascade_at_each_threshold() -> None:
    cascade = {
        "q1": _cascade("q1", 0.9, "A", None),  # sure and right
        "q2": _cascade("q2", 0.7, "B", None),  # sure (at 0.5) and wrong
        "q3": _cascade("q3", 0.2, "B", "A"),  # escalated, the teacher is right
    }
    teacher = {"q2": {"item": "q2", "status": "ok", "extracted": "A", "calls": 5, "cost": 10.0}}
    sweep = cascade_sweep(cascade, {"cascade": cascade, "prompted": teacher})
    assert sweep is not None and sweep["first"] == "tuned" and sweep["last"] == "prompted"
    by = {p["threshold"]: p for p in sweep["points"]}
    assert by[0.0]["escalated"] == 0 and by[0.0]["accuracy"] == pytest.approx(1 / 3)
    assert by[0.5]["accuracy"] == pytest.approx(2 / 3) and by[0.5]["cost"] == pytest.approx(13 / 3)
    assert by[0.8]["accuracy"] == 1 and by[0.8]["escalated"] == pytest.approx(2 / 3)
    assert by[1.0]["cost"] == pytest.approx(11.0)  # everything escalates


def test_the_sweep_knows_the_last_step_when_nothing_escalated() -> None:
    """With the steps from the run's manifest, the sweep reads the teacher's own records for
    the items a higher threshold would escalate, though the cascade escalated none."""
    cascade = {"q1": _cascade("q1", 0.9, "B", None), "q2": _cascade("q2", 0.7, "A", None)}
    teacher = {
        q: {"item": q, "status": "ok", "extracted": "A", "calls": 5, "cost": 10.0}
        for q in ("q1", "q2")
    }
    steps: list[dict[str, Any]] = [
        {"variant": "tuned", "accept": {"answer_prob": 0.5}},
        {"variant": "prompted"},
    ]
    sweep = cascade_sweep(cascade, {"cascade": cascade, "prompted": teacher}, steps)
    assert sweep is not None and sweep["last"] == "prompted"
    by = {p["threshold"]: p for p in sweep["points"]}
    assert by[1.0]["accuracy"] == 1 and by[1.0]["unknown"] == 0
    assert by[0.8]["accuracy"] == pytest.approx(0.5) and by[0.8]["escalated"] == pytest.approx(0.5)
