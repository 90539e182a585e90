"""``gateway datasets export``: filters, the fine-tuning format and the lineage file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.events.schema import CaptureRow, FeedbackRow, InferenceEvent
from gateway.events.stores import SQLiteStore

CONFIG = """
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  medqa:
    capture: {sample_rate: 1, retention_days: 30}
    variants: {a: {target: fake, weight: 1}, b: {target: fake, weight: 1}}
"""


def _fill(store: SQLiteStore) -> None:
    now = time.time()
    rows = [  # id, variant, confidence, age in days, correct
        ("inf-1", "a", 0.9, 1, True),
        ("inf-2", "a", 0.4, 1, True),
        ("inf-3", "b", 1.0, 1, False),
        ("inf-4", "a", 1.0, 10, True),
        ("inf-5", "a", 1.0, 40, True),  # past retention: purged before export
    ]
    for rid, variant, confidence, age, correct in rows:
        ts = now - age * 86400
        store.write_events(
            [InferenceEvent(id=rid, ts=ts, route="medqa", variant=variant, status="ok")]
        )
        store.write_captures(
            [
                CaptureRow(
                    id=rid,
                    ts=ts,
                    route="medqa",
                    variant=variant,
                    messages=[{"role": "user", "content": f"question {rid}"}],
                    response=f"Answer: {rid[-1]}",
                    confidence=confidence,
                )
            ]
        )
        store.write_feedback(
            [
                FeedbackRow.new(
                    inference_id=rid,
                    name="correct",
                    kind="boolean",
                    value=float(correct),
                    text=None,
                )
            ]
        )


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        ([], ["inf-4", "inf-1", "inf-2", "inf-3"]),
        (["--variant", "a"], ["inf-4", "inf-1", "inf-2"]),
        (["--min-confidence", "0.8"], ["inf-4", "inf-1", "inf-3"]),
        (["--where", "correct=1"], ["inf-4", "inf-1", "inf-2"]),
        (["--where", "correct=false", "--since", "5d"], ["inf-3"]),
    ],
)
def test_export_filters_and_lineage(tmp_path: Path, args: list[str], ids: list[str]) -> None:
    home = tmp_path / "home"
    store = SQLiteStore(home / "events.db")
    _fill(store)
    store.close()
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    out = tmp_path / "data.jsonl"
    result = CliRunner().invoke(
        app,
        ["datasets", "export", "--route", "medqa", "--out", str(out),
         "--config", str(tmp_path / "gateway.yaml"), *args],
        env={"GATEWAY_HOME": str(home)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["messages"][0]["content"] for line in lines] == [f"question {i}" for i in ids]
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)
    lineage = json.loads((tmp_path / "data.lineage.json").read_text())
    assert lineage["inference_ids"] == ids
    assert lineage["filter"]["route"] == "medqa" and lineage["rows"] == len(ids)
