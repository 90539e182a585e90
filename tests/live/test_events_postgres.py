"""The event log on a real PostgreSQL server, through an outage and back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.events.log import EventLog
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.stores import PostgresStore
from tests.support.postgres import PostgresServer


def event(i: int) -> InferenceEvent:
    return InferenceEvent(
        id=f"pg-{i}", ts=float(i), route="r", variant="a", status="ok", votes={"C": 5},
        latency_ms=1.5,
    )  # fmt: skip


def test_postgres_store_roundtrip(postgres: PostgresServer) -> None:
    store = PostgresStore(postgres.url)
    store.write_events([event(1), event(2)])
    store.write_events([event(1)])  # a replayed duplicate is ignored
    store.write_feedback(
        [
            FeedbackRow(
                id="f1", inference_id="pg-1", name="correct", kind="boolean", value=1.0, ts=3.0
            )
        ]
    )
    row = store.get_event("pg-1")
    assert row is not None and row["votes"] == {"C": 5} and row["shadow"] is False
    assert [e["id"] for e in store.events("r") if e["id"].startswith("pg-")][:2] == ["pg-1", "pg-2"]
    assert store.feedback("r")[0]["inference_id"] == "pg-1"
    store.set_override("r", "a", 1.0)
    store.set_override("r", "b", 2.0)
    assert store.overrides()["r"] == "b"
    store.close()


async def test_outage_spools_and_replays_into_postgres(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    store = PostgresStore(postgres.url)
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01, replay_interval_s=0.2)
    await log.start()
    for i in range(100, 150):
        log.record(event(i))
    await log.flush()
    await asyncio.to_thread(postgres.stop)
    try:
        for i in range(150, 200):
            log.record(event(i))
        await log.flush()
        assert log.stats.spooled == 50
        assert await log.get_event("pg-175") is not None
    finally:
        await asyncio.to_thread(postgres.start)
    # Wait for the replay: a condition, with a deadline a loaded machine meets.
    deadline = asyncio.get_running_loop().time() + 60
    while log.spool_path.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert not log.spool_path.exists(), "the spool was not replayed into PostgreSQL"
    await log.stop()
    check = PostgresStore(postgres.url)
    ids = [e["id"] for e in check.events("r")]
    check.close()
    wanted = {f"pg-{i}" for i in range(100, 200)}
    assert wanted <= set(ids)
    assert len([i for i in ids if i in wanted]) == 100  # nothing lost, nothing twice
    assert log.stats.dropped == 0
