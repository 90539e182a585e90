"""The report page's reliability diagram and cascade sweeps, from records as `gateway eval`
writes them (``record_of``) and summarised by the report's own ``summarise``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from gateway.evaluation.backends import Outcome
from gateway.evaluation.data import EvalItem
from gateway.evaluation.html import to_html
from gateway.evaluation.plots import MAX_LABELS
from gateway.evaluation.report import summarise
from gateway.evaluation.run import record_of
from gateway.evaluation.scoring import ScorerSpec

ITEMS = [
    EvalItem(f"q{i}", i + 1, "A", question="?", options={k: k for k in "ABCD"}) for i in range(10)
]
EVIL = "<script>alert(1)</script>"
BARE = "<b>bare</b>"
RELIABILITY = "Calibration (reliability diagram)"
Records = dict[str, dict[str, dict[str, Any]]]


def _records(outcomes: dict[str, list[Outcome]]) -> Records:
    return {
        variant: {
            item.id: record_of(ScorerSpec("mc"), item, variant, outcome)
            for item, outcome in zip(ITEMS, rows, strict=True)
        }
        for variant, rows in outcomes.items()
    }


def _voted(share: int, right: bool) -> Outcome:
    """A vote of five: ``share`` for the answer, which is the gold A when ``right``."""
    answer, other = ("A", "B") if right else ("B", "A")
    return Outcome("ok", answer=answer, votes={answer: share, other: 5 - share}, calls=5)


def _cascade(confidence: float, cost: float | None, threshold: float = 0.65) -> Outcome:
    """A tuned step sure enough when its answer is right, else a teacher that is always right."""
    first = "A" if confidence >= 0.5 else "C"
    steps: list[dict[str, Any]] = [
        {"variant": "tuned", "rule": {"answer_prob": threshold}, "answer": first,
         "confidence": confidence, "accepted": confidence >= threshold, "calls": 1,
         "cost": cost},
    ]  # fmt: skip
    if confidence < threshold:
        steps.append(
            {"variant": "teacher", "rule": None, "answer": "A", "confidence": 1.0,
             "accepted": True, "calls": 5, "cost": None if cost is None else 10 * cost}
        )  # fmt: skip
    total = None if cost is None else sum(s["cost"] for s in steps)
    calls = sum(s["calls"] for s in steps)
    return Outcome("ok", answer=steps[-1]["answer"], calls=calls, cost=total, steps=steps)


def _page(outcomes: dict[str, list[Outcome]]) -> tuple[dict[str, Any], str]:
    records = _records(outcomes)
    manifest = {
        "run_id": "eval-1",
        "route": "r",
        "data": {"path": "items.jsonl"},
        "scorer": {"kind": "mc"},
        "chosen": list(outcomes),
    }
    summary = summarise(manifest, ITEMS, records)
    return summary, to_html(summary, records)


def _section(page: str, heading: str) -> str:
    """What follows ``heading`` up to the next heading."""
    start = page.index(f"<h2>{heading}</h2>") + len(heading) + 9
    end = min(i for i in (page.find("<h2>", start), page.find("</body>", start)) if i >= 0)
    return page[start:end]


def _svg(section: str) -> ET.Element:
    [svg] = re.findall(r"<svg.*?</svg>", section, re.S)
    return ET.fromstring(svg)  # well-formed, or this fails


def _titled(svg: ET.Element, cls: str) -> list[tuple[ET.Element, str]]:
    return [(c, c.findtext("title") or "") for c in svg.iter("circle") if c.get("class") == cls]


# voter: 4 answers at confidence 1.0 (3 right), 4 at 0.8 (2 right), 2 at 0.6 (1 right)
VOTER = [_voted(5, i < 3) for i in range(4)] + [_voted(4, i < 2) for i in range(4)]
VOTER += [_voted(3, True), _voted(3, False)]
EVIL_ROWS = [_voted(5, True)] * 5 + [_voted(3, i < 2) for i in range(5)]
PLAIN = [Outcome("ok", answer="A" if i % 2 else "B", calls=1) for i in range(10)]
# first-step confidences 0.05, 0.15, ... 0.95: each threshold escalates a different count
SPREAD = [0.05 + 0.1 * i for i in range(10)]


@pytest.fixture(scope="module")
def full() -> tuple[dict[str, Any], str]:
    return _page(
        {
            "voter": VOTER,
            EVIL: EVIL_ROWS,
            "plain": PLAIN,
            BARE: PLAIN,
            "cascade": [_cascade(c, 1.0) for c in SPREAD],
            "teacher": [Outcome("ok", answer="A", calls=5, cost=10.0) for _ in ITEMS],
        }
    )


def test_the_reliability_diagram_has_a_point_per_bin(full: tuple[dict[str, Any], str]) -> None:
    summary, page = full
    svg = _svg(_section(page, RELIABILITY))
    bins = _titled(svg, "bin")
    plotted = ["voter", EVIL, "cascade"]
    for name in plotted:
        expected = summary["variants"][name]["calibration"]["bins"]
        mine = [c for c, title in bins if title.startswith(f"{name}: ")]
        assert len(mine) == len(expected) > 0, name
    assert len(bins) == sum(len(summary["variants"][n]["calibration"]["bins"]) for n in plotted)
    voter = {title.split(",")[0]: c for c, title in bins if title.startswith("voter: ")}
    assert sorted(voter) == [f"voter: confidence {r}" for r in ("0.6-0.7", "0.8-0.9", "0.9-1.0")]
    # marker area as the bin's count: 4 answers at 0.8, 2 at 0.6
    radius = {k.split()[-1]: float(c.get("r", 0)) for k, c in voter.items()}
    assert radius["0.8-0.9"] > radius["0.6-0.7"]
    assert len(svg.findall("polyline")) == len(plotted)
    # ECE: (2 * |0.5 - 0.6| + 4 * |0.5 - 0.8| + 4 * |0.75 - 1.0|) / 10 = 0.24
    legend = [t.text or "" for t in svg.iter("text")]
    assert "voter (ECE 0.240, n=10)" in legend
    assert f"{EVIL} (ECE " in " ".join(legend)  # unescaped by the parser: escaped in the page
    assert "perfect calibration" in legend


def test_variants_without_confidence_are_named_not_plotted(
    full: tuple[dict[str, Any], str],
) -> None:
    section = _section(full[1], RELIABILITY)
    names = f"plain, {html_escaped(BARE)}, teacher"
    assert f"No confidence (no votes), not plotted: {names}." in section
    titles = [t for _, t in _titled(_svg(section), "bin")]
    assert not any(t.startswith(("plain:", f"{BARE}:", "teacher:")) for t in titles)


def test_the_sweep_has_a_point_per_threshold_and_rings_the_configured_one(
    full: tuple[dict[str, Any], str],
) -> None:
    summary, page = full
    points = summary["cascades"]["cascade"]["points"]
    assert [p["threshold"] for p in points] == sorted({*(i / 10 for i in range(11)), 0.65})
    svg = _svg(_section(page, "Cascade cascade: accuracy against cost by threshold"))
    marks = _titled(svg, "threshold")
    assert len(marks) == len(points) == 12
    assert [t.split(":")[0] for _, t in marks] == [f"threshold {p['threshold']:g}" for p in points]
    [ring] = [c for c in svg.iter("circle") if c.get("class") == "configured"]
    [at] = [c for c, t in marks if t.startswith("threshold 0.65:")]
    assert (ring.get("cx"), ring.get("cy")) == (at.get("cx"), at.get("cy"))
    # joined in threshold order; more escalation costs more, so x never falls
    [line] = svg.findall("polyline")
    xs = [float(pair.split(",")[0]) for pair in (line.get("points") or "").split()]
    assert len(xs) == 12 and xs == sorted(xs) and xs[0] < xs[-1]
    texts = [t.text or "" for t in svg.iter("text")]
    assert any(t.startswith("cost per request") for t in texts)
    # 11 distinct points (0.6 and 0.65 escalate the same items): a subset is labelled
    labels = [t for t in texts if t.startswith("t=")]
    assert 2 <= len(labels) <= MAX_LABELS + 2
    assert "t=0.6-0.65: 60% escalated (configured)" in labels
    assert "t=0: 0% escalated" in labels and "t=1: 100% escalated" in labels


def test_an_unpriced_sweep_reads_calls_and_labels_every_distinct_point() -> None:
    summary, page = _page(
        {
            "cascade": [_cascade(0.3 if i == 0 else 0.9, None) for i in range(10)],
            "teacher": [Outcome("ok", answer="A", calls=5) for _ in ITEMS],
        }
    )
    assert all(p["cost"] is None for p in summary["cascades"]["cascade"]["points"])
    svg = _svg(_section(page, "Cascade cascade: accuracy against cost by threshold"))
    texts = [t.text or "" for t in svg.iter("text")]
    assert "model calls per request (no prices in the config)" in texts
    assert len(_titled(svg, "threshold")) == 12
    # one item at 0.3, the others at 0.9: three distinct points, each labelled
    assert sorted(t for t in texts if t.startswith("t=")) == [
        "t=0-0.3: 0% escalated",
        "t=0.4-0.9: 10% escalated (configured)",
        "t=1: 100% escalated",
    ]


def test_user_strings_are_escaped(full: tuple[dict[str, Any], str]) -> None:
    page = full[1]
    assert "<script" not in page and "http" not in page
    assert html_escaped(EVIL) in page


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_no_cascade_no_sweep_and_no_confidence_says_so() -> None:
    _, page = _page({"plain": PLAIN, EVIL: PLAIN})
    assert "Cascade " not in page and "by threshold" not in page
    section = _section(page, RELIABILITY)
    assert "No variant has a confidence" in section and "<svg" not in section
    assert "<script" not in page and html_escaped(EVIL) in page
    assert page.count("<svg") == 4  # accuracy, cost, latency, answers
