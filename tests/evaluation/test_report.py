"""`gateway report` with offline runs beside live traffic, over a real SQLite event database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.stores import SQLiteStore

CONFIG = """
models: {m: {engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  r:
    variants: {a: {target: m, weight: 50}, b: {target: m, weight: 50}}
    experiment: {metrics: {correct: {type: boolean}}, min_samples: 3}
"""


def event(eid: str, variant: str, ts: float, **extra: Any) -> InferenceEvent:
    row: dict[str, Any] = {
        "route": "r",
        "variant": variant,
        "assignment": "sticky",
        "status": "ok",
        "latency_ms": 100.0,
    }
    return InferenceEvent(id=eid, ts=ts, **{**row, **extra})


def score(eid: str, value: bool) -> FeedbackRow:
    return FeedbackRow(
        id=f"f-{eid}", inference_id=eid, name="correct", kind="boolean", value=float(value), ts=1.0
    )


@pytest.fixture
def populated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path))
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    store = SQLiteStore(tmp_path / "events.db")
    rows, feedback = [], []
    # Live: a right 1 of 2, b right 2 of 2.
    for i, (variant, right) in enumerate([("a", True), ("a", False), ("b", True), ("b", True)]):
        rows.append(event(f"on{i}", variant, float(i)))
        feedback.append(score(f"on{i}", right))
    # An old offline run, and a newer one: a right 3 of 4 (+1 failed, +1 cancelled), b 1 of 4.
    rows.append(event("old0", "a", 5.0, source="offline", run_id="eval-old", assignment="offline"))
    for i in range(4):
        for variant, right in (("a", i < 3), ("b", i < 1)):
            eid = f"new-{variant}{i}"
            rows.append(
                event(eid, variant, 10.0 + i, source="offline", run_id="eval-new", cost=0.5)
            )
            feedback.append(score(eid, right))
    rows.append(event("new-err", "a", 20.0, source="offline", run_id="eval-new", status="error"))
    rows.append(
        event("new-cxl", "a", 21.0, source="offline", run_id="eval-new", status="cancelled")
    )
    store.write_events(rows)
    store.write_feedback(feedback)
    store.close()
    return config


def test_report_shows_the_latest_offline_run_beside_live_traffic(populated: Path) -> None:
    runner = CliRunner()
    as_json = runner.invoke(app, ["report", "--config", str(populated), "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    [report] = json.loads(as_json.output)
    # Live figures leave offline events out.
    assert report["variants"]["a"]["n"] == 2 and report["variants"]["b"]["n"] == 2
    newest, oldest = report["offline"]
    assert (newest["run_id"], oldest["run_id"]) == ("eval-new", "eval-old")
    a, b = newest["variants"]["a"], newest["variants"]["b"]
    assert (a["n"], a["errors"]) == (5, 1)  # the cancelled call is no result
    assert a["accuracy"]["mean"] == pytest.approx(0.75) and a["accuracy"]["n"] == 4
    assert b["accuracy"]["mean"] == pytest.approx(0.25) and b["cost"] == pytest.approx(0.5)

    table = runner.invoke(app, ["report", "--config", str(populated)])
    assert table.exit_code == 0
    assert "Offline run eval-new and online traffic; earlier runs: eval-old" in table.output
    side_by_side = table.output.split("Offline run eval-new")[1]
    # At the runner's 80 columns the table prints one block per variant: "│ label │ value │".
    pairs = [
        [c.strip() for c in x.strip().strip("│").split("│")]
        for x in side_by_side.splitlines()
        if x.strip().startswith("│") and x.count("│") == 3
    ]
    start = pairs.index(["variant", "b"])
    block = dict(pairs[start : start + 9])
    assert block["online n"] == "2" and block["online correct [95% CI]"].startswith("1")
    assert block["offline n"] == "4" and block["offline accuracy [95% CI]"].startswith("0.25")

    page = runner.invoke(app, ["report", "--config", str(populated), "--format", "html"])
    assert "<caption>Offline run eval-new" in page.output and "0.75 [" in page.output
