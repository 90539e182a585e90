"""Confidence you can read: each variant's calibration, and a cascade's accuracy against cost
over a sweep of thresholds, from an evaluation's records.

Calibration bins the answers by confidence (the winner's vote share for voting pipelines; for a
cascade, its answering step's confidence) into tenths: a reliability table, and the expected
calibration error (ECE: the bins' gaps between accuracy and mean confidence, weighted by size).

A cascade's records hold every step that ran (``steps``); its first step runs on every item,
so its confidence and answer are known everywhere. The sweep replays the cascade at each
threshold: an item whose first-step confidence falls below it takes the last step's answer,
which is the cascade's own where it escalated, else the last step's variant's record in the
same run (evaluate the cascade with its steps' variants for a full sweep; the run's manifest
names the steps, so this holds where nothing escalated). Two-step cascades.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Record = Mapping[str, Any]
#: the thresholds every sweep shows, with the cascade's own
SWEEP = [round(0.1 * i, 1) for i in range(11)]
BINS = 10


def confidence(record: Record) -> float | None:
    """The record's confidence in its answer (None: it has none)."""
    steps = record.get("steps")
    if steps:
        value = steps[-1].get("confidence")
        return float(value) if isinstance(value, int | float) else None
    votes, answer = record.get("votes"), record.get("extracted")
    if not votes or answer is None:
        return None
    cast = sum(votes.values())
    return votes.get(answer, 0) / cast if cast else None


def calibration(rows: Sequence[Record]) -> dict[str, Any]:
    """The reliability table (tenths of confidence) and the ECE of the rows with a confidence."""
    pairs = [
        (c, bool(r.get("correct")))
        for r in rows
        if r.get("status") == "ok" and (c := confidence(r)) is not None
    ]
    bins: list[dict[str, Any]] = []
    for index in range(BINS):
        low, high = index / BINS, (index + 1) / BINS
        inside = [(c, ok) for c, ok in pairs if low <= c < high or (index == BINS - 1 and c == 1)]
        if inside:
            bins.append(
                {
                    "range": [low, high],
                    "n": len(inside),
                    "confidence": sum(c for c, _ in inside) / len(inside),
                    "accuracy": sum(ok for _, ok in inside) / len(inside),
                }
            )
    ece = (
        sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / len(pairs)
        if pairs
        else None
    )
    return {"n": len(pairs), "ece": ece, "bins": bins}


def cascade_sweep(
    rows: Mapping[str, Record],
    records: Mapping[str, Mapping[str, Record]],
    steps: Sequence[Record] | None = None,
) -> dict[str, Any] | None:
    """Accuracy, escalation, calls and cost per request at each threshold of a two-step
    cascade's first step; None when ``rows`` are no cascade's. ``steps``: the cascade's, as
    the run's manifest has them (without: the last step is known from an item that reached
    it)."""
    runs = [r for r in rows.values() if r.get("status") == "ok" and r.get("steps")]
    if not runs or any(len(r["steps"]) > 2 for r in runs) or (steps and len(steps) > 2):
        return None
    first = runs[0]["steps"][0]
    last = steps[-1]["variant"] if steps else None
    if last is None:
        last = next((r["steps"][-1]["variant"] for r in runs if len(r["steps"]) == 2), None)
    rule = first.get("rule") or {}
    fallback = records.get(str(last), {}) if last is not None else {}
    points = []
    for threshold in sorted({*SWEEP, *(float(v) for v in rule.values())}):
        outcomes = [_replay(r, threshold, fallback) for r in runs]
        known = [o for o in outcomes if o is not None]
        if not known:
            continue
        n = len(known)
        costs = [o["cost"] for o in known]
        points.append(
            {
                "threshold": threshold,
                "n": n,
                "escalated": sum(o["escalated"] for o in known) / n,
                "accuracy": sum(o["correct"] for o in known) / n,
                "calls": sum(o["calls"] for o in known) / n,
                "cost": None if None in costs else sum(c for c in costs if c is not None) / n,
                "unknown": len(outcomes) - n,
            }
        )
    return {
        "first": first["variant"],
        "last": last,
        "rule": rule,
        "points": points,
    }


def _replay(
    record: Record, threshold: float, fallback: Mapping[str, Record]
) -> dict[str, Any] | None:
    steps = record["steps"]
    first = steps[0]
    expected = record.get("expected")
    sure = first.get("confidence") is not None and first["confidence"] >= threshold
    if sure:
        return {
            "correct": first.get("answer") == expected,
            "escalated": False,
            "calls": first.get("calls") or 0,
            "cost": first.get("cost"),
        }
    if len(steps) > 1:
        last = steps[-1]
        answer, calls, cost = last.get("answer"), last.get("calls") or 0, last.get("cost")
    else:
        other = fallback.get(str(record.get("item")))
        if other is None or other.get("status") != "ok":
            return None  # the last step never ran on this item: evaluate its variant too
        answer, calls, cost = other.get("extracted"), other.get("calls") or 0, other.get("cost")
    first_cost = first.get("cost")
    return {
        "correct": answer == expected,
        "escalated": True,
        "calls": (first.get("calls") or 0) + calls,
        "cost": None if first_cost is None or cost is None else first_cost + cost,
    }


# -- as tables ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def calibration_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "confidence bin", "n", "mean confidence", "accuracy", "ECE"]
    rows = []
    for name, figures in summary["variants"].items():
        cal = figures.get("calibration") or {}
        if not cal.get("n"):
            rows.append([name, "no confidence (no votes)", "0", "-", "-", "-"])
            continue
        for index, b in enumerate(cal["bins"]):
            low, high = b["range"]
            ece = _f(cal["ece"]) if index == 0 else ""
            rows.append(
                [name if index == 0 else "", f"{low:.1f}-{high:.1f}", str(b["n"]),
                 _f(b["confidence"]), _f(b["accuracy"]), ece]
            )  # fmt: skip
    return header, rows


def sweep_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["cascade", "threshold", "n", "escalated", "accuracy", "calls/req", "cost/req"]
    rows = []
    for name, sweep in (summary.get("cascades") or {}).items():
        for index, p in enumerate(sweep["points"]):
            mark = (
                " *" if float(p["threshold"]) in [float(v) for v in sweep["rule"].values()] else ""
            )
            rows.append(
                [name if index == 0 else "", f"{p['threshold']:.2f}{mark}", str(p["n"]),
                 _f(p["escalated"], 2), _f(p["accuracy"]), _f(p["calls"], 2),
                 "-" if p["cost"] is None else f"{p['cost']:.3g}"]
            )  # fmt: skip
    return header, rows
