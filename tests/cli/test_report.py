"""`gateway report` over a real SQLite event database."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.fixture
def populated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path))
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    store = SQLiteStore(tmp_path / "events.db")
    rows, feedback = [], []
    for variant in ("a", "b"):
        for i in range(4):
            eid = f"{variant}{i}"
            rows.append(
                InferenceEvent(
                    id=eid,
                    ts=float(i),
                    route="r",
                    variant=variant,
                    assignment="sticky",
                    status="ok",
                    latency_ms=10.0 + i,
                )
            )
            feedback.append(
                FeedbackRow(
                    id=f"f{eid}",
                    inference_id=eid,
                    name="correct",
                    kind="boolean",
                    value=float(variant == "b"),
                    ts=1.0,
                )
            )
    store.write_events(rows)
    store.write_feedback(feedback)
    store.close()
    return config


def test_report_formats(populated: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["report", "--config", str(populated)])
    assert table.exit_code == 0, table.output
    assert "Route r" in table.output and "Verdict" in table.output
    as_json = runner.invoke(app, ["report", "--config", str(populated), "--format", "json"])
    data = json.loads(as_json.output)
    assert data[0]["variants"]["b"]["metrics"]["correct"]["mean"] == 1.0
    out = tmp_path / "report.html"
    html = runner.invoke(
        app, ["report", "--config", str(populated), "--format", "html", "--out", str(out)]
    )
    assert html.exit_code == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page


def test_report_errors(populated: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["report", "--config", str(populated), "--route", "zzz"])
    assert bad.exit_code == 2 and "no route 'zzz'" in bad.output
    bad = runner.invoke(app, ["report", "--config", str(populated), "--format", "pdf"])
    assert bad.exit_code == 2 and "--format" in bad.output
