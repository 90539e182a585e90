"""Intention to treat by an exact key: every attempt of a request carries its ``request_id``.

Through the in-process gateway (the dispatcher sets it, shadows get their own), on rows (the
grouping in units.py, and the chaining kept for rows from before the column), and on a SQLite
file made before the column existed (it gains it when opened).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.config.loader import parse_config
from gateway.errors import EngineUnavailableError
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.stores import PostgresStore, SQLiteStore
from gateway.experiments.analysis import analyse
from gateway.experiments.units import requests
from tests.support.fakes import FakeEngine
from tests.support.postgres import PostgresServer

CONFIG = """
models:
  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  m2: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  m3: {engine: vllm, urls: ["http://127.0.0.1:9"]}
reliability: {cooldown_failures: 1000}
routes:
  qa:
    sticky_key: user
    variants:
      first: {target: m1, weight: 50}
      second: {target: m2, weight: 50}
      shadowed: {target: m3, weight: 0}
    shadow: [{variant: shadowed, sample_rate: 1.0}]
    fallback: [second]
    experiment:
      metrics: {correct: {type: boolean}}
      min_samples: 2
"""
ASK: list[Any] = [{"role": "user", "content": "hi"}]


class SlowFailing(FakeEngine):
    """Fails retryably after a pause, so that concurrent requests' attempts interleave."""

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return await super().chat(body)


async def test_concurrent_look_alike_requests_with_fallbacks_are_attributed_exactly(
    gateway: Any,
) -> None:
    engines = {
        "m1": SlowFailing("m1", fail_with=EngineUnavailableError("engine down")),
        "m2": FakeEngine("m2", text="from m2"),
        "m3": FakeEngine("m3", text="shadow"),
    }
    route = parse_config(CONFIG, "t.yaml").routes["qa"]
    async with gateway(engines, CONFIG) as (_client, raw):
        # One user that lands on 'first': all its requests are look-alikes (same key, same
        # variant, same failure, same fallback), sent at once.
        user = next(
            f"u{i}"
            for i in range(200)
            if gateway.state.router.get("qa").assign(user=f"u{i}", headers={}).variant.name
            == "first"
        )

        async def ask() -> str:
            resp = await raw.post(
                "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": user}
            )
            assert resp.status_code == 200
            return str(resp.headers["x-switchboard-inference-id"])

        answered = await asyncio.gather(*(ask() for _ in range(8)))
        await gateway.state.dispatcher.drain_shadows()
        await gateway.state.events.flush()
        store = gateway.state.events.store
        events = store.events("qa")
        for i, inference_id in enumerate(answered):
            score = float(i % 2)
            store.write_feedback([_feedback(inference_id, score)])
        feedback = store.feedback("qa")

    live = [e for e in events if not e["shadow"]]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in live:
        groups[e["request_id"]].append(e)
    assert len(groups) == 8
    for rows in groups.values():
        rows.sort(key=lambda e: e["attempt"])
        assert [(e["attempt"], e["variant"], e["status"]) for e in rows] == [
            (0, "first", "error"),
            (1, "second", "ok"),
        ]
        assert rows[0]["request_id"] == rows[0]["id"]  # the first attempt's id
    assert sorted(rows[-1]["id"] for rows in groups.values()) == sorted(answered)
    shadows = [e for e in events if e["shadow"]]
    assert len(shadows) == 8 and all(e["request_id"] == e["id"] for e in shadows)

    rebuilt = requests(live)
    assert sorted(r.id for r in rebuilt) == sorted(answered)
    assert all(len(r.ids) == 2 and r.assigned == "first" for r in rebuilt)
    report = analyse("qa", route, events, feedback)
    first = report["variants"]["first"]
    assert first["n"] == 8 and first["answered_by_fallback"] == 8 and first["errors"] == 0
    assert report["variants"]["second"]["n"] == 0
    assert first["metrics"]["correct"]["mean"] == 0.5


def _feedback(inference_id: str, value: float) -> FeedbackRow:
    return FeedbackRow.new(
        inference_id=inference_id, name="correct", kind="boolean", value=value, text=None
    )


def _row(eid: str, variant: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "ts": ts,
        "route": "qa",
        "variant": variant,
        "assignment": "random",
        "key_hash": None,
        "attempt": 0,
        "status": "ok",
        "fallback_from": None,
        **kw,
    }


def test_request_ids_group_exactly_where_chaining_swaps_outcomes() -> None:
    """Two keyless requests whose chains look alike: R1 assigned 'second' but started on
    'first' (second cooling down), R2 assigned 'first'; both fail on 'first', and R2's retry
    starts before R1's. Chaining gives the oldest open request (R1) the first retry it sees,
    R2's; the request ids keep each outcome with its own request."""
    rows = [
        _row("r1-0", "first", 1.0, status="error", fallback_from="second", request_id="r1-0"),
        _row("r2-0", "first", 1.05, status="error", request_id="r2-0"),
        _row("r2-1", "second", 1.1, attempt=1, fallback_from="first", request_id="r2-0"),
        _row("r1-1", "first", 1.2, attempt=1, fallback_from="first", request_id="r1-0"),
    ]
    exact = {r.assigned: r.ids for r in requests(rows)}
    assert exact == {"second": ["r1-0", "r1-1"], "first": ["r2-0", "r2-1"]}
    old = [{k: v for k, v in r.items() if k != "request_id"} for r in rows]
    guessed = {r.assigned: r.ids for r in requests(old)}
    assert guessed == {"second": ["r1-0", "r2-1"], "first": ["r2-0", "r1-1"]}


def test_an_old_database_gains_the_request_id_column(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE inference_events (id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
        "route TEXT, variant TEXT, status TEXT NOT NULL, shadow INTEGER NOT NULL DEFAULT 0, "
        "source TEXT)"
    )
    old.execute("INSERT INTO inference_events VALUES ('old', 1.0, 'qa', 'a', 'ok', 0, 'online')")
    old.commit()
    old.close()
    store = SQLiteStore(path)
    try:
        store.write_events(
            [InferenceEvent(id="new", ts=2.0, route="qa", status="ok", request_id="req")]
        )
        rows = {e["id"]: e for e in store.events("qa")}
    finally:
        store.close()
    assert rows["old"]["request_id"] is None and rows["new"]["request_id"] == "req"
    assert rows["new"]["attempt"] is None  # every missing column was added
    SQLiteStore(path).close()  # and opening it again adds nothing


def test_an_old_postgres_database_gains_the_request_id_column(postgres: PostgresServer) -> None:
    import psycopg

    url = str(postgres.url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS before_request_ids CASCADE")
        conn.execute("CREATE SCHEMA before_request_ids")
        conn.execute(
            "CREATE TABLE before_request_ids.inference_events (id TEXT PRIMARY KEY, "
            "ts DOUBLE PRECISION NOT NULL, route TEXT, variant TEXT, status TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO before_request_ids.inference_events VALUES ('old', 1, 'qa', 'a', 'ok')"
        )
    joiner = "&" if "?" in url else "?"
    store = PostgresStore(f"{url}{joiner}options=-csearch_path%3Dbefore_request_ids")
    try:
        store.write_events(
            [InferenceEvent(id="new", ts=2.0, route="qa", status="ok", request_id="req")]
        )
        rows = {e["id"]: e for e in store.events("qa")}
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA before_request_ids CASCADE")
    assert rows["old"]["request_id"] is None and rows["new"]["request_id"] == "req"
    assert rows["new"]["shadow"] is False  # the defaulted flag column was added too
