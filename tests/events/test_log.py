"""The event log on a real SQLite file; store outages injected at the store seam."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.events.log import EventLog
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.stores import SQLiteStore


def event(i: int) -> InferenceEvent:
    return InferenceEvent(
        id=f"inf-{i}", ts=float(i), route="r", variant="a", status="ok", votes={"A": 2, "B": 1}
    )


class FlakyStore(SQLiteStore):
    """A real SQLite store that can be switched 'down'."""

    down = False

    def write_events(self, rows: Sequence[InferenceEvent]) -> None:
        if self.down:
            raise StoreError("database is down")
        super().write_events(rows)

    def write_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        if self.down:
            raise StoreError("database is down")
        super().write_feedback(rows)

    def get_event(self, inference_id: str) -> dict[str, Any] | None:
        if self.down:
            raise StoreError("database is down")
        return super().get_event(inference_id)


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM inference_events").fetchone()[0])


async def test_batched_writes_reach_sqlite_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.05)
    await log.start()
    for i in range(500):
        log.record(event(i))
    assert await log.get_event("inf-499") is not None  # visible before it is written
    await log.flush()
    assert count(tmp_path / "events.db") == 500
    row = store.get_event("inf-7")
    assert row is not None and row["votes"] == {"A": 2, "B": 1} and row["shadow"] is False
    with sqlite3.connect(tmp_path / "events.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await log.stop()
    assert log.stats.written == 500 and log.stats.dropped == 0


async def test_durable_mode_commits_before_returning(tmp_path: Path) -> None:
    log = EventLog(SQLiteStore(tmp_path / "events.db"), tmp_path / "spool", durable=True)
    await log.start()
    await log.record_durable(event(1))
    assert count(tmp_path / "events.db") == 1
    await log.stop()


async def test_outage_spools_then_replays_without_duplicates(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db")
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01, replay_interval_s=0.05)
    await log.start()
    log.record(event(0))
    await log.flush()
    store.down = True
    for i in range(1, 101):
        log.record(event(i))
    await log.flush()
    await log.add_feedback(
        FeedbackRow(
            id="fb-1", inference_id="inf-5", name="correct", kind="boolean", value=1.0, ts=1.0
        )
    )
    assert log.stats.spooled == 100
    assert count(tmp_path / "events.db") == 1
    assert await log.get_event("inf-50") is not None  # found in the spool while down
    # One row is already in the database too: replay must not duplicate it.
    store.down = False
    store.write_events([event(3)])
    # Wait for the replay (a condition, bounded by a deadline a loaded machine meets).
    deadline = asyncio.get_running_loop().time() + 60
    while log.spool_path.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert not log.spool_path.exists()
    assert count(tmp_path / "events.db") == 101
    assert [f["inference_id"] for f in store.feedback()] == ["inf-5"]
    await log.stop()
    assert log.stats.dropped == 0


async def test_stop_spools_what_it_cannot_write(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db")
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01)
    await log.start()
    store.down = True
    for i in range(20):
        log.record(event(i))
    await log.stop()
    lines = log.spool_path.read_text().splitlines()
    assert len(lines) == 20
    # The next start replays it.
    store2 = SQLiteStore(tmp_path / "events.db")
    log2 = EventLog(store2, tmp_path / "spool")
    await log2.start()
    assert count(tmp_path / "events.db") == 20
    await log2.stop()


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = EventLog(SQLiteStore(tmp_path / "events.db"), tmp_path / "spool", max_queue=5)
    # Not started: nothing drains the queue.
    for i in range(8):
        log.record(event(i))
    assert log.stats.dropped == 3
    assert log.stats.queue_depth == 5


def test_unwritable_database_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the event database"):
        SQLiteStore(blocker / "events.db")
