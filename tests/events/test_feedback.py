"""Feedback through the API: bounded values, one row per (inference, metric), a rate limit.

A value no sum can hold (1.7e308) is refused with a 400 naming ``value``, so it can never turn
a variant's mean into null; a replayed POST updates its row instead of adding one (the last
value wins); and a key's request rate bounds its feedback too.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admission.keys import hash_key
from gateway.errors import StoreDataError
from gateway.events.schema import FeedbackRow
from gateway.events.stores import SQLiteStore
from tests.support.apps import InProcessGateway

KEY = "sb-feedback-test-key-0123456789"

CONFIG = f"""
auth:
  keys:
    - {{name: tests, hash: "{hash_key(KEY)}", scopes: [inference, feedback, admin],
       requests_per_minute: 60}}
models:
  fake: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  ab:
    variants:
      a: {{target: fake, weight: 1}}
    experiment:
      metrics: {{correct: {{type: boolean}}, rating: {{type: float}}}}
"""
HEADERS = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def gateway(tmp_path: Path) -> InProcessGateway:
    return InProcessGateway(tmp_path)


async def answered(raw: httpx.AsyncClient) -> str:
    body = {"model": "ab", "messages": [{"role": "user", "content": "hi"}]}
    resp = await raw.post("/v1/chat/completions", json=body, headers=HEADERS)
    assert resp.status_code == 200, resp.text
    return str(resp.headers["x-switchboard-inference-id"])


def feedback_rows(home: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(home / "events.db", timeout=5)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM feedback ORDER BY ts")]


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, 1e13, float("inf")])
async def test_a_value_no_sum_can_hold_is_refused(gateway: InProcessGateway, value: float) -> None:
    async with gateway(config=CONFIG) as (_client, raw):
        inference_id = await answered(raw)
        body = {"inference_id": inference_id, "name": "rating", "value": value}
        content = json.dumps(body).encode()  # the standard library writes inf as Infinity
        resp = await raw.post(
            "/v1/feedback",
            content=content,
            headers={**HEADERS, "content-type": "application/json"},
        )
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error"
        # Infinity is not JSON: refused as a body; a finite value out of bounds names its field.
        assert error["param"] == (None if value == float("inf") else "value")
        ok = await raw.post(
            "/v1/feedback",
            json={"inference_id": inference_id, "name": "rating", "value": 1e12},
            headers=HEADERS,
        )
        assert ok.status_code == 201, ok.text
    assert [r["value"] for r in feedback_rows(gateway.home)] == [1e12]


async def test_feedback_is_one_row_per_inference_and_metric(gateway: InProcessGateway) -> None:
    async with gateway(config=CONFIG) as (_client, raw):
        inference_id = await answered(raw)
        ids = set()
        for i in range(40):
            resp = await raw.post(
                "/v1/feedback",
                json={"inference_id": inference_id, "name": "rating", "value": float(i)},
                headers=HEADERS,
            )
            assert resp.status_code == 201, resp.text
            ids.add(resp.json()["id"])
        correct = await raw.post(
            "/v1/feedback",
            json={"inference_id": inference_id, "name": "correct", "value": True},
            headers=HEADERS,
        )
        assert correct.status_code == 201
    rows = feedback_rows(gateway.home)
    # One row per (inference, metric); the last value wins; a replay answers the same id.
    assert sorted((r["name"], r["value"]) for r in rows) == [("correct", 1.0), ("rating", 39.0)]
    assert len(ids) == 1


async def test_feedback_obeys_the_keys_rate_limit(gateway: InProcessGateway) -> None:
    async with gateway(
        config=CONFIG.replace("requests_per_minute: 60", "requests_per_minute: 5")
    ) as (
        _client,
        raw,
    ):
        inference_id = await answered(raw)
        statuses = []
        for i in range(8):
            resp = await raw.post(
                "/v1/feedback",
                json={"inference_id": inference_id, "name": "rating", "value": float(i)},
                headers=HEADERS,
            )
            statuses.append(resp.status_code)
        assert statuses[:5] == [201] * 5
        assert statuses[5:] == [429] * 3
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["type"] == "rate_limit_error"


def test_the_store_refuses_values_no_sum_can_hold(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    row = FeedbackRow(id="fb-x", inference_id="i", name="rating", kind="float", value=1.7e308, ts=1)
    with pytest.raises(StoreDataError):
        store.write_feedback([row])
    store.close()


def test_the_store_keeps_the_latest_feedback_of_a_metric(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")

    def row(rid: str, value: float, ts: float) -> FeedbackRow:
        return FeedbackRow(
            id=rid, inference_id="i", name="rating", kind="float", value=value, ts=ts
        )

    store.write_feedback([row("fb-1", 1.0, 1.0), row("fb-2", 2.0, 2.0)])
    store.write_feedback([row("fb-1", 1.0, 1.0)])  # a late replay of the older value: ignored
    store.close()
    rows = feedback_rows(tmp_path)
    assert [(r["value"], r["ts"]) for r in rows] == [(2.0, 2.0)]


def test_an_older_database_with_duplicate_feedback_is_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP INDEX IF EXISTS feedback_inference_name")
        for i in range(3):
            db.execute(
                "INSERT INTO feedback (id, inference_id, name, kind, value, ts) "
                "VALUES (?, 'i', 'rating', 'float', ?, ?)",
                [f"old-{i}", float(i), float(i)],
            )
        db.commit()
    SQLiteStore(path).close()
    assert [r["value"] for r in feedback_rows(tmp_path)] == [2.0]
