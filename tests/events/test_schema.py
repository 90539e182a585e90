"""The typed rows are the tables: the stores' columns are the dataclasses' fields, and a row
with every column set goes through the spool and back unchanged."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.events.log import EventLog
from gateway.events.schema import FeedbackRow, InferenceEvent, as_dict
from gateway.events.stores import SQLiteStore


def table_columns(path: Path, table: str) -> list[tuple[str, str, bool]]:
    """(name, type, NOT NULL) of each column, in the table's order."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return [(str(c[1]), str(c[2]), bool(c[3])) for c in info]


@pytest.mark.parametrize(
    ("table", "row_type", "not_null"),
    [
        ("inference_events", InferenceEvent, {"ts", "shadow", "status"}),
        ("feedback", FeedbackRow, {"inference_id", "name", "kind", "ts"}),
    ],
)
def test_the_store_columns_are_the_dataclass_fields(
    tmp_path: Path,
    table: str,
    row_type: type[InferenceEvent | FeedbackRow],
    not_null: set[str],
) -> None:
    SQLiteStore(tmp_path / "events.db").close()
    columns = table_columns(tmp_path / "events.db", table)
    assert [name for name, _, _ in columns] == [f.name for f in dataclasses.fields(row_type)]
    # The same constraints as the hand-written schema before it: old and new tables agree.
    assert {name for name, _, required in columns if required} == not_null


class DownStore(SQLiteStore):
    """A real SQLite store whose writes fail as an outage while ``down``."""

    down = True

    def write_events(self, rows: Sequence[InferenceEvent]) -> None:
        if self.down:
            raise StoreError("database is down")
        super().write_events(rows)

    def write_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        if self.down:
            raise StoreError("database is down")
        super().write_feedback(rows)


def full_event() -> InferenceEvent:
    """An event with every column set to a value unlike its default."""
    return InferenceEvent(
        id="inf-full", ts=1.5, route="r", variant="a", assignment="sticky", model="m",
        adapter="ad", pipeline="medprompt", key_hash="kh", shadow=True, attempt=1,
        fallback_from="b", stream=True, status="ok", http_status=200, error_code="e",
        error_message="msg", latency_ms=12.5, ttft_ms=3.25, prompt_tokens=7,
        completion_tokens=9, calls=5, cost=0.125, answer="C", votes={"C": 4, "A": 1},
        source="offline", run_id="eval-1",
    )  # fmt: skip


async def test_every_column_goes_through_the_spool_and_back(tmp_path: Path) -> None:
    store = DownStore(tmp_path / "events.db")
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01, replay_interval_s=60)
    await log.start()
    event = full_event()
    feedback = FeedbackRow(
        id="fb-1", inference_id=event.id, name="note", kind="comment", text="why", ts=2.0
    )
    log.record(event)
    await log.flush()
    await log.add_feedback(feedback)
    assert log.stats.spooled == 1
    assert await log.get_event(event.id) == event  # read back from the spool, typed
    store.down = False
    assert await log.replay() == 1
    assert store.get_event(event.id) == as_dict(event)
    assert store.feedback("r") == [as_dict(feedback)]
    assert await log.get_event(event.id) == event  # and from the database
    await log.stop()
