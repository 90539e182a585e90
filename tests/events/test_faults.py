"""The event log on a real SQLite file through real database faults, and rows it refuses.

Faults: LOCKED (another connection holds ``BEGIN EXCLUSIVE``), FULL (``PRAGMA max_page_count``
at the file's size: SQLITE_FULL) and READ-ONLY (``PRAGMA query_only``: SQLITE_READONLY; file
modes do not stop root, which the test machines run as). Through each, in batched and durable
mode, no event is lost: each is in the database or in the spool, and once the fault is lifted
the replay puts every one in the database exactly once and removes the spool.

Poison rows (a row the database refuses as data, not an outage) are quarantined: they never
hold back their batch or block the spool, and they are kept, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreDataError, StoreError
from gateway.events.log import EventLog
from gateway.events.schema import FeedbackRow, InferenceEvent, as_dict
from gateway.events.stores import PostgresStore, SQLiteStore
from tests.support.postgres import PostgresServer

N = 150  # more rows than the last page of a full database holds


def event(name: str, **extra: Any) -> InferenceEvent:
    """An event; ``extra`` may hold values the types forbid, as a poison row would."""
    fields: dict[str, Any] = {"route": "r", "variant": "a", "status": "ok", "votes": {"A": 1}}
    return InferenceEvent(id=name, ts=1.0, **{**fields, **extra})


def feedback(name: str, inference_id: str) -> FeedbackRow:
    return FeedbackRow(
        id=name, inference_id=inference_id, name="correct", kind="boolean", value=1.0, ts=2.0
    )


class Store(SQLiteStore):
    """The real SQLite store, with a way to set its own connection's PRAGMAs."""

    def pragma(self, statement: str) -> Any:
        with self._lock:
            return self._conn.execute(f"PRAGMA {statement}").fetchone()


def db_ids(path: Path, table: str = "inference_events") -> list[str]:
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
        return [str(r[0]) for r in conn.execute(f"SELECT id FROM {table}")]


def file_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def spooled_ids(log: EventLog) -> list[str]:
    return [e["row"]["id"] for e in file_rows(log.spool_path) if e["kind"] == "event"]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


# -- the faults ---------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(store: Store) -> Iterator[None]:
    holder = sqlite3.connect(store.path, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("COMMIT")
        holder.close()


@contextlib.contextmanager
def full(store: Store) -> Iterator[None]:
    # No page may be added: the rows that still fit in the last page go in, the others fail.
    (pages,) = store.pragma("page_count")
    assert store.pragma(f"max_page_count = {pages}") == (pages,)
    try:
        yield
    finally:
        store.pragma("max_page_count = 1073741823")


@contextlib.contextmanager
def read_only(store: Store) -> Iterator[None]:
    store.pragma("query_only = ON")
    try:
        yield
    finally:
        store.pragma("query_only = OFF")


FAULTS = {"locked": locked, "full": full, "read_only": read_only}


@pytest.mark.parametrize("durable", [False, True], ids=["batched", "durable"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_no_event_is_lost_through_a_fault(tmp_path: Path, fault: str, durable: bool) -> None:
    store = Store(tmp_path / "events.db", busy_timeout_s=0.01)
    log = EventLog(
        store,
        tmp_path / "spool",
        durable=durable,
        batch_size=16,
        flush_interval_s=0.01,
        replay_interval_s=0.05,  # replays are tried, and postponed, all through the fault
    )
    await log.start()
    before = [event(f"before-{i}") for i in range(10)]
    during = [event(f"during-{i}") for i in range(N)]
    for row in before:
        log.record(row)
    await log.flush()

    with FAULTS[fault](store):
        for row in during:
            if durable:
                await log.record_durable(row)
                # Durable: in the database or the spool before the call returns.
                assert row.id in spooled_ids(log) or row.id in db_ids(store.path)
            else:
                log.record(row)
        await log.flush()
        in_db, in_spool = set(db_ids(store.path)), set(spooled_ids(log))
        assert in_spool, "the fault made no write fail"
        assert in_db | in_spool == {r.id for r in before + during}
        assert in_db.isdisjoint(in_spool)
        assert log.stats.written + log.stats.spooled == len(before) + N
        # Feedback can still find a spooled event.
        assert await log.get_event(sorted(in_spool)[0]) is not None

    await until(lambda: not log.spool_path.exists())
    ids = db_ids(store.path)
    assert sorted(ids) == sorted(r.id for r in before + during)  # each exactly once
    assert log.stats.replayed == len(in_spool) and log.stats.quarantined == 0
    assert not log.quarantine_path.exists()
    await log.stop()


async def test_the_spool_survives_a_restart_during_the_fault(tmp_path: Path) -> None:
    store = Store(tmp_path / "events.db", busy_timeout_s=0.01)
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01, replay_interval_s=60)
    await log.start()
    store.pragma("query_only = ON")
    for i in range(N):
        log.record(event(f"e-{i}"))
    await log.stop()  # the gateway stops while the database still refuses writes
    assert len(spooled_ids(log)) == N
    restarted = EventLog(SQLiteStore(tmp_path / "events.db"), tmp_path / "spool")
    await restarted.start()  # replays at start
    assert sorted(db_ids(tmp_path / "events.db")) == sorted(f"e-{i}" for i in range(N))
    assert not restarted.spool_path.exists()
    await restarted.stop()


# -- poison rows --------------------------------------------------------------------------------


def poison_trigger(path: Path) -> None:
    """A test-only trigger: the database refuses any row whose id starts with 'poison'."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for table in ("inference_events", "feedback"):
            conn.execute(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                "WHEN NEW.id LIKE 'poison%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            )
        conn.commit()


def test_the_store_tells_data_errors_from_outages(tmp_path: Path) -> None:
    store = Store(tmp_path / "events.db", busy_timeout_s=0.01)
    poison_trigger(store.path)
    for bad in (
        event("poison-1"),  # a trigger's RAISE(ABORT): SQLITE_CONSTRAINT
        event("x-1", status=None),  # NOT NULL
        event("x-2", answer={"nested": "dict"}),  # cannot be bound
        event("x-3", prompt_tokens=2**70),  # over 64 bits
        event("x-4", route="\ud800"),  # a lone surrogate cannot be encoded
        event("x-5", votes={"A": object()}),  # votes that are not JSON
    ):
        with pytest.raises(StoreDataError):
            store.write_events([bad])
    for fault in FAULTS.values():
        # More rows than the last page holds, for the full database.
        with fault(store), pytest.raises(StoreError) as raised:
            store.write_events([event(f"fine-{i}") for i in range(200)])
        assert not isinstance(raised.value, StoreDataError)
    store.close()
    with pytest.raises(StoreError) as raised:
        store.write_events([event("fine")])
    assert not isinstance(raised.value, StoreDataError)  # closed: not the row's fault


async def test_a_poisoned_row_is_quarantined_and_the_spool_replays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "events.db", busy_timeout_s=0.01)
    poison_trigger(store.path)
    log = EventLog(
        store, tmp_path / "spool", batch_size=8, flush_interval_s=0.01, replay_interval_s=0.05
    )
    await log.start()
    rows = [event(f"e-{i}") for i in range(N)]
    rows[7], rows[33] = event("poison-7"), event("poison-33")
    with locked(store):  # an outage first: everything goes to the spool, poison included
        for row in rows:
            log.record(row)
        await log.flush()
        await log.add_feedback(feedback("poison-fb", "e-1"))
        await log.add_feedback(feedback("fb-2", "e-2"))
        assert len(spooled_ids(log)) == N
    with caplog.at_level(logging.WARNING, logger="gateway.events.log"):
        await until(lambda: not log.spool_path.exists())
    assert sorted(db_ids(store.path)) == sorted(r.id for r in rows if r.id[0] == "e")
    assert db_ids(store.path, "feedback") == ["fb-2"]
    quarantined = file_rows(log.quarantine_path)
    assert sorted(q["row"]["id"] for q in quarantined) == ["poison-33", "poison-7", "poison-fb"]
    assert {q["kind"] for q in quarantined} == {"event", "feedback"}
    assert all("poisoned row" in q["error"] for q in quarantined)
    assert log.quarantined == 3 == log.stats.quarantined
    assert log.stats.replayed == N - 2
    assert "poison-7" in caplog.text and str(log.quarantine_path) in caplog.text
    await log.stop()


@pytest.mark.parametrize("durable", [False, True], ids=["batched", "durable"])
async def test_a_poisoned_row_does_not_hold_back_its_batch(tmp_path: Path, durable: bool) -> None:
    store = Store(tmp_path / "events.db")
    poison_trigger(store.path)
    log = EventLog(store, tmp_path / "spool", batch_size=64, flush_interval_s=0.05)
    await log.start()
    rows = [event(f"e-{i}") for i in range(20)]
    rows[5] = event("poison-5")
    for row in rows:
        if durable:
            await log.record_durable(row)
        else:
            log.record(row)
    await log.flush()
    assert len(db_ids(store.path)) == 19  # written at once, not spooled for a later replay
    assert not log.spool_path.exists()
    assert [q["row"]["id"] for q in file_rows(log.quarantine_path)] == ["poison-5"]
    assert log.stats.written == 19 and log.stats.quarantined == 1
    await log.stop()


async def test_rows_sqlite_cannot_hold_do_not_stop_the_writer(tmp_path: Path) -> None:
    # An int over 64 bits used to escape as OverflowError and end the writer task: every later
    # event stayed queued, flush() never returned, and the queue filled up and dropped events.
    store = Store(tmp_path / "events.db")
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01)
    await log.start()
    log.record(event("big", prompt_tokens=2**70))
    log.record(event("nested", answer={"A": 1}))
    log.record(event("surrogate", route="\ud800"))
    await asyncio.wait_for(log.flush(), 5)
    log.record(event("after"))
    await asyncio.wait_for(log.flush(), 5)
    assert db_ids(store.path) == ["after"]
    assert log.quarantined == 3 and log.stats.dropped == 0
    quarantined = {q["row"]["id"]: q for q in file_rows(log.quarantine_path)}
    assert quarantined["big"]["row"]["prompt_tokens"] == 2**70  # kept as it was
    await log.stop()


async def test_unreadable_spool_lines_are_quarantined_not_fatal(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = [json.dumps({"kind": "event", "row": as_dict(event(f"e-{i}"))}) for i in range(5)]
    torn = '{"kind": "event", "row": {"id": "e-torn", "ts"'  # a crash in the middle of a write
    (spool / "spool.jsonl").write_text("\n".join([*lines, "[1, 2]", torn]) + "\n")
    store = Store(tmp_path / "events.db", busy_timeout_s=0.01)
    log = EventLog(store, spool, flush_interval_s=0.01)
    with read_only(store):
        await log.start()  # the replay at start is postponed by the outage, and does not fail
        assert await log.get_event("e-3") is not None  # found in the spool, torn line and all
    assert await log.replay() == 5
    assert sorted(db_ids(store.path)) == [f"e-{i}" for i in range(5)]
    assert [q["row"]["line"] for q in file_rows(log.quarantine_path)] == ["[1, 2]", torn]
    assert not log.spool_path.exists()
    await log.stop()


# -- the API over a failing store ----------------------------------------------------------------

ROUTED = """
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  ab:
    variants:
      a: {target: fake, weight: 1}
"""


async def test_experiment_endpoints_answer_503_when_the_store_fails(gateway: Any) -> None:
    async with gateway(config=ROUTED) as (_client, raw):
        store = gateway.state.events.store
        store.close()  # every read and write now fails as an outage
        report = await raw.get("/v1/experiments/ab")
        promote = await raw.post("/v1/experiments/ab/promote", json={"variant": "a"})
    for response in (report, promote):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["retry-after"] == "5"


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    # A real server, as the issue asks: `make test` and `make test-fast` install its binaries.
    return str(postgres.url)


async def test_postgres_refusals_are_quarantined_too(postgres_url: str, tmp_path: Path) -> None:
    store = PostgresStore(postgres_url)
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE inference_events ADD CONSTRAINT test_no_poison "
            "CHECK (id NOT LIKE 'poison%')"
        )
    try:
        log = EventLog(store, tmp_path / "spool", batch_size=64, flush_interval_s=0.01)
        await log.start()
        rows = [event(f"pgq-{i}") for i in range(10)]
        rows[1] = event("poison-pg")  # a CHECK constraint
        rows[2] = event("pgq-nul", route="a\x00b")  # PostgreSQL text cannot hold NUL
        rows[3] = event("pgq-dict", answer={"A": 1})  # psycopg cannot adapt a dict
        for row in rows:
            log.record(row)
        await log.flush()
        stored = {e["id"] for e in store.events("r") if e["id"].startswith("pgq-")}
        assert stored == {f"pgq-{i}" for i in range(10)} - {"pgq-1", "pgq-2", "pgq-3"}
        quarantined = {q["row"]["id"] for q in file_rows(log.quarantine_path)}
        assert quarantined == {"poison-pg", "pgq-nul", "pgq-dict"}
        assert log.quarantined == 3 and not log.spool_path.exists()
        await log.stop()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE inference_events DROP CONSTRAINT test_no_poison")
