"""The console's admin endpoints in process: recent inferences, one in full, the overview, an
experiment's history, and the static pages under /ui."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.admission.keys import hash_key
from gateway.errors import EngineUnavailableError
from gateway.events.reads import EventQuery
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.sql import Store
from gateway.events.stores import PostgresStore, SQLiteStore
from tests.support.apps import AppFactory
from tests.support.fakes import FakeEngine
from tests.support.postgres import PostgresServer

ADMIN_KEY = "sb-console-admin-key"
USER_KEY = "sb-console-user-key"
CONFIG = """
models:
  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  m2: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    sticky_key: user
    allow_pin: true
    variants:
      first: {target: m1, weight: 50}
      second: {target: m2, weight: 50}
    fallback: [first, second]
    experiment:
      metrics: {correct: {type: boolean}}
      min_samples: 5
"""
KEYS = f"""
auth:
  keys:
    - {{name: app, hash: "{hash_key(USER_KEY)}", scopes: [inference, feedback]}}
    - {{name: ops, hash: "{hash_key(ADMIN_KEY)}", scopes: [admin]}}
"""
ASK: list[Any] = [{"role": "user", "content": "hi"}]


def engines(**override: FakeEngine) -> dict[str, Any]:
    return {"m1": FakeEngine("m1"), "m2": FakeEngine("m2"), **override}


async def _traffic(raw: Any, n: int) -> list[str]:
    ids = []
    for i in range(n):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": f"u{i}"}
        )
        assert resp.status_code == 200
        inference_id = resp.headers["x-switchboard-inference-id"]
        ids.append(inference_id)
        fb = {"inference_id": inference_id, "name": "correct", "value": i % 2 == 0}
        assert (await raw.post("/v1/feedback", json=fb)).status_code == 201
    return ids


async def test_inferences_are_listed_newest_first_with_their_feedback(
    gateway: AppFactory,
) -> None:
    async with gateway(engines(), CONFIG) as (_, raw):
        ids = await _traffic(raw, 6)
        resp = await raw.get("/v1/inferences", params={"route": "qa", "limit": 4})
        assert resp.status_code == 200
        body = resp.json()
        assert [r["id"] for r in body["data"]] == ids[::-1][:4]
        assert all(r["feedback"][0]["name"] == "correct" for r in body["data"])
        one = body["data"][0]
        variant = one["variant"]
        only = (await raw.get("/v1/inferences", params={"variant": variant})).json()["data"]
        assert only and {r["variant"] for r in only} == {variant}
        target = (await raw.get("/v1/inferences", params={"target": "m1"})).json()["data"]
        assert {r["model"] for r in target} <= {"m1"}
        assert (await raw.get("/v1/inferences", params={"status": "error"})).json()["data"] == []
        late = {"since": one["ts"] + 1}
        assert (await raw.get("/v1/inferences", params=late)).json()["data"] == []
        for bad in ({"limit": 0}, {"limit": 501}, {"status": "weird"}, {"since": -1}):
            refused = await raw.get("/v1/inferences", params=bad)
            assert refused.status_code == 400, bad
            assert "error" in refused.json()


async def test_one_inference_in_full_with_its_fallback_attempts(gateway: AppFactory) -> None:
    down = FakeEngine("m1", fail_with=EngineUnavailableError("m1 is down", retry_after_s=1))
    async with gateway(engines(m1=down), CONFIG) as (_, raw):
        # Users assigned to 'first' fail on m1 and fall back to 'second'.
        ids = []
        for i in range(12):
            body = {"model": "qa", "messages": ASK, "user": f"someone-{i}"}
            resp = await raw.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200
            ids.append(resp.headers["x-switchboard-inference-id"])
        details = [(await raw.get(f"/v1/inferences/{i}")).json() for i in ids]
        chained = [d for d in details if len(d["attempts"]) >= 2]
        assert chained, "no request fell back"
        detail = chained[0]
        inference_id = detail["inference"]["id"]
        assert [a["status"] for a in detail["attempts"]][-1] == "ok"
        assert detail["attempts"][0]["status"] == "error"
        assert detail["attempts"][-1]["id"] == inference_id
        assert detail["request"]["assigned"] == "first"
        assert detail["request"]["answered_by"] == "second"
        assert detail["request"]["attempts"] == len(detail["attempts"])
        # The first attempt's page shows the same request.
        failed = (await raw.get(f"/v1/inferences/{detail['attempts'][0]['id']}")).json()
        assert [a["id"] for a in failed["attempts"]] == [a["id"] for a in detail["attempts"]]
        fb = {"inference_id": inference_id, "name": "correct", "value": True}
        assert (await raw.post("/v1/feedback", json=fb)).status_code == 201
        detail = (await raw.get(f"/v1/inferences/{inference_id}")).json()
        assert detail["feedback"][0]["value"] == 1.0
        missing = await raw.get("/v1/inferences/inf-nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "inference_not_found"


async def test_the_overview_has_every_model_route_and_the_traffic(gateway: AppFactory) -> None:
    async with gateway(engines(m2=FakeEngine("m2", ready=False)), CONFIG) as (_, raw):
        await _traffic(raw, 4)
        body = (await raw.get("/v1/overview")).json()
        assert body["models"]["m1"]["ready"] is True
        assert body["models"]["m2"]["ready"] is False
        assert set(body["routes"]["qa"]["variants"]) == {"first", "second"}
        assert body["routes"]["qa"]["share"] == pytest.approx({"first": 0.5, "second": 0.5}, 0.1)
        traffic = body["traffic"]
        assert traffic["routes"]["qa"]["requests"] == 4
        assert traffic["routes"]["qa"]["error_rate"] == 0.0
        assert traffic["routes"]["qa"]["latency_ms"]["p95"] is not None
        assert sum(t["requests"] for t in traffic["targets"].values()) == 4
        assert sum(traffic["series"]["routes"]["qa"]["requests"]) == 4
        assert (await raw.get("/v1/overview", params={"window_s": 1})).status_code == 400


async def test_history_ends_where_the_report_is(gateway: AppFactory) -> None:
    async with gateway(engines(), CONFIG) as (_, raw):
        await _traffic(raw, 30)
        history = (await raw.get("/v1/experiments/qa/history", params={"points": 5})).json()
        report = (await raw.get("/v1/experiments/qa")).json()
        points = history["points"]
        assert 1 <= len(points) <= 5
        assert [p["ts"] for p in points] == sorted(p["ts"] for p in points)
        last = points[-1]
        assert last["status"] == report["decision"]["status"]
        primary = [c for c in report["comparisons"] if c["primary"]]
        assert last["comparisons"][0]["difference"] == primary[0]["difference"]
        assert sum(last["units"].values()) == 30
        assert sum(points[0]["units"].values()) < 30
        assert (await raw.get("/v1/experiments/nope/history")).status_code == 404
        assert (await raw.get("/v1/experiments/qa/history?points=0")).status_code == 400


async def test_the_console_endpoints_need_the_admin_scope(gateway: AppFactory) -> None:
    async with gateway(engines(), CONFIG + KEYS) as (_, raw):
        for path in ("/v1/inferences", "/v1/overview", "/v1/experiments/qa/history"):
            assert (await raw.get(path)).status_code == 401
            user = await raw.get(path, headers={"authorization": f"Bearer {USER_KEY}"})
            assert user.status_code == 403
            assert user.json()["error"]["code"] == "insufficient_scope"
            admin = await raw.get(path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert admin.status_code == 200, path
        # The pages themselves hold no data: served without a key, and told one is needed.
        page = await raw.get("/ui")
        assert page.status_code == 200
        assert (await raw.get("/ui/session")).json() == {"keys": True}


async def test_the_console_pages_are_served_from_the_package(gateway: AppFactory) -> None:
    async with gateway(engines(), CONFIG) as (_, raw):
        page = await raw.get("/ui")
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert 'type="module"' in page.text
        script = await raw.get("/ui/js/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert (await raw.get("/ui/vendor/uplot/uPlot.esm.js")).status_code == 200
        for bad in ("/ui/../app.py", "/ui/js/../../app.py", "/ui/nope.js", "/ui/%2e%2e/x.js"):
            assert (await raw.get(bad)).status_code == 404, bad
        assert (await raw.get("/ui/", follow_redirects=False)).status_code == 308
        assert (await raw.get("/ui/session")).json() == {"keys": False}


def _rows(prefix: str) -> tuple[list[InferenceEvent], list[FeedbackRow]]:
    events = [
        InferenceEvent(
            id=f"{prefix}-{i}", ts=1000.0 + i, route="r", variant="ab"[i % 2], model="m",
            adapter="ad" if i % 2 else None, status="error" if i == 3 else "ok",
            latency_ms=10.0 + i, prompt_tokens=5, completion_tokens=2, votes={"A": i},
        )
        for i in range(6)
    ]  # fmt: skip
    feedback = [
        FeedbackRow(
            id=f"{prefix}-f{i}", inference_id=f"{prefix}-{i}", name="correct", kind="boolean",
            value=1.0, ts=2000.0 + i,
        )
        for i in (1, 2)
    ]  # fmt: skip
    return events, feedback


def _check_reads(store: Store, prefix: str) -> None:
    events, feedback = _rows(prefix)
    store.write_events(events)
    store.write_feedback(feedback)
    newest = store.recent_events(EventQuery(route="r", limit=3))
    assert [e["id"] for e in newest] == [f"{prefix}-5", f"{prefix}-4", f"{prefix}-3"]
    assert newest[0]["votes"] == {"A": 5}
    assert {e["id"] for e in store.recent_events(EventQuery(route="r", target="ad"))} == {
        f"{prefix}-1", f"{prefix}-3", f"{prefix}-5"
    }  # fmt: skip
    failed = store.recent_events(EventQuery(route="r", status="error"))
    assert [e["id"] for e in failed] == [f"{prefix}-3"]
    window = store.recent_events(EventQuery(route="r", variant="a", since=1001.5, until=1004.5))
    assert [e["id"] for e in window] == [f"{prefix}-4", f"{prefix}-2"]
    joined = store.feedback_for([f"{prefix}-2", f"{prefix}-1", f"{prefix}-0"])
    assert [f["inference_id"] for f in joined] == [f"{prefix}-1", f"{prefix}-2"]
    assert store.feedback_for([]) == []
    scan = [r for r in store.traffic(1002.0, 10_000) if r.get("route") == "r"]
    assert [r["ts"] for r in scan] == [1002.0, 1003.0, 1004.0, 1005.0]
    assert scan[0]["shadow"] is False and "votes" not in scan[0]
    assert len(store.traffic(0.0, 2)) == 2


def test_the_read_methods_on_sqlite(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    try:
        _check_reads(store, "sq")
    finally:
        store.close()


def test_the_read_methods_on_postgres(postgres: PostgresServer) -> None:
    store = PostgresStore(postgres.url)
    try:
        _check_reads(store, f"pg{int(time.time() * 1000)}")
    finally:
        store.close()
