"""The event log: one row per inference (and per feedback), never lost silently.

Default mode: ``record`` puts the event on an in-memory queue and returns at once; a writer task
sends batches to the store from a worker thread. Durable mode: ``record_durable`` commits
before the response goes out. Either way, when the store fails the rows are appended to a spool
file (fsynced) under ``$GATEWAY_HOME/spool`` and replayed when the store is back; inserts are
idempotent, so a replay that is interrupted and repeated leaves no duplicates. Only a full
queue drops rows, and drops are counted (``stats.dropped``) and exported as a metric.

An outage (``StoreError``) spools a batch; a refusal of the data (``StoreDataError``: a row
the database will never take) must not hold back the rows around it, or block the spool
forever. Such a batch is written again row by row, and the refused rows are moved to a
quarantine file beside the spool (fsynced; ``stats.quarantined`` counts them, and a warning
names them), where an operator can inspect, fix and replay them. Spool lines that cannot even be
read (a write torn by a crash) are quarantined the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.errors import StoreDataError, StoreError
from gateway.events.schema import FeedbackRow, InferenceEvent, as_dict, from_dict
from gateway.events.stores import Store

log = logging.getLogger(__name__)

SPOOL_NAME = "spool.jsonl"
QUARANTINE_NAME = "quarantine.jsonl"
#: put on the queue by ``flush``: the writer writes the batch in hand at once
_WAKE = InferenceEvent(id="flush", ts=0.0, status="flush")


@dataclass
class EventLogStats:
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    queue_depth: int = 0
    #: rows (events and feedback) the database refused as data, moved to the quarantine file
    quarantined: int = 0


Row = TypeVar("Row", InferenceEvent, FeedbackRow)
#: a row as the spool and the quarantine file hold it (a JSON object)
Line = dict[str, Any]


@dataclass
class _Stored(Generic[Row]):
    """What writing some rows came to: written, refused as data, or left by an outage."""

    written: int = 0
    refused: list[tuple[Row, StoreDataError]] = field(default_factory=list)
    outage: StoreError | None = None
    unwritten: list[Row] = field(default_factory=list)

    def refused_lines(self) -> list[tuple[Line, StoreDataError]]:
        return [(as_dict(row), exc) for row, exc in self.refused]


class EventLog:
    def __init__(
        self,
        store: Store,
        spool_dir: Path,
        *,
        durable: bool = False,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        max_queue: int = 100_000,
        replay_interval_s: float = 5.0,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.durable = durable
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.replay_interval_s = replay_interval_s
        self.stats = EventLogStats()
        self._queue: asyncio.Queue[InferenceEvent] = asyncio.Queue(maxsize=max_queue)
        # Events accepted but not yet in the store, so feedback can find them meanwhile.
        self._pending: dict[str, InferenceEvent] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._spool_lock = asyncio.Lock()
        self._quarantine_lock = asyncio.Lock()

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / SPOOL_NAME

    @property
    def quarantine_path(self) -> Path:
        return self.spool_dir / QUARANTINE_NAME

    @property
    def quarantined(self) -> int:
        """Rows moved to the quarantine file since start (for metrics and health)."""
        return self.stats.quarantined

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        await self.replay()
        self._tasks = [
            asyncio.create_task(self._writer(), name="event-writer"),
            asyncio.create_task(self._replayer(), name="event-replayer"),
        ]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (or spool it), then close the store."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leftover = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _WAKE:
                leftover.append(item)
        if leftover:
            await self._spool("event", leftover)
        await asyncio.to_thread(self.store.close)

    # -- writing --------------------------------------------------------------------------------

    def record(self, event: InferenceEvent) -> None:
        """Queue one event; never blocks. A full queue drops the event and counts it."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.error("event log queue full: dropped event %s", event.id)
            return
        self._pending[event.id] = event
        self.stats.queue_depth = self._queue.qsize()

    async def record_durable(self, event: InferenceEvent) -> None:
        """Commit one event before returning (to the store, or to the spool if it is down)."""
        await self._write("event", self.store.write_events, [event])

    async def add_feedback(self, row: FeedbackRow) -> None:
        """Feedback is always written durably: it is rare and a client waits for its 201."""
        await self._write("feedback", self.store.write_feedback, [row])

    async def flush(self) -> None:
        """Return once every queued event is written (or spooled), without waiting out a batch."""
        with contextlib.suppress(asyncio.QueueFull):  # a full queue fills a batch by itself
            self._queue.put_nowait(_WAKE)
        await self._queue.join()

    async def get_event(self, inference_id: str) -> InferenceEvent | None:
        pending = self._pending.get(inference_id)
        if pending is not None:
            return pending
        try:
            found = await asyncio.to_thread(self.store.get_event, inference_id)
        except StoreError:
            found = None
        if found is not None:
            return from_dict(InferenceEvent, found)
        # Not in the database: it may be spooled, also while the database can be read but not
        # written (locked, full, read-only).
        return self._find_in_spool(inference_id)

    async def _write(
        self, kind: str, write: Callable[[Sequence[Row]], None], rows: list[Row]
    ) -> None:
        """Write rows to the store; spool what an outage leaves, quarantine what it refuses."""
        stored = await self._store(write, rows)
        if kind == "event":
            self.stats.written += stored.written
        await self._quarantine(kind, stored.refused_lines())
        if stored.outage is not None:
            log.warning(
                "event store unavailable (%s); spooling %d %s rows",
                stored.outage,
                len(stored.unwritten),
                kind,
            )
            await self._spool(kind, stored.unwritten)

    async def _store(self, write: Callable[[Sequence[Row]], None], rows: list[Row]) -> _Stored[Row]:
        """Write ``rows``; a batch refused as data is written again row by row, to find the
        rows at fault. Nothing raises: an outage is reported with the rows it left unwritten."""
        stored: _Stored[Row] = _Stored()
        try:
            await asyncio.to_thread(write, rows)
        except StoreDataError as exc:
            if len(rows) == 1:
                stored.refused.append((rows[0], exc))
                return stored
        except StoreError as exc:
            stored.outage, stored.unwritten = exc, rows
            return stored
        else:
            stored.written = len(rows)
            return stored
        for index, row in enumerate(rows):
            try:
                await asyncio.to_thread(write, [row])
            except StoreDataError as exc:
                stored.refused.append((row, exc))
            except StoreError as exc:
                stored.outage, stored.unwritten = exc, rows[index:]
                break
            else:
                stored.written += 1
        return stored

    async def _writer(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [] if first is _WAKE else [first]
            woken = first is _WAKE
            deadline = time.monotonic() + self.flush_interval_s
            # Collect a batch until it is full, the interval is over, or a flush wakes us (a
            # batch in hand must not wait out the interval while the gateway shuts down).
            while not woken and len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                if item is _WAKE:
                    woken = True
                else:
                    batch.append(item)
            try:
                if batch:
                    await self._write("event", self.store.write_events, batch)
            except Exception:  # a store bug must not stop the writer: keep the rows
                log.exception("writing %d events failed; spooling them", len(batch))
                await self._spool_or_drop(batch)
            finally:
                for event in batch:
                    self._pending.pop(event.id, None)
                    self._queue.task_done()
                if woken:
                    self._queue.task_done()
                self.stats.queue_depth = self._queue.qsize()

    # -- spool and replay -----------------------------------------------------------------------

    async def _spool(self, kind: str, rows: Sequence[InferenceEvent | FeedbackRow]) -> None:
        if not rows:
            return
        lines = "".join(
            json.dumps({"kind": kind, "row": as_dict(r)}, default=str) + "\n" for r in rows
        )
        async with self._spool_lock:
            await asyncio.to_thread(_append_synced, self.spool_path, lines)
        if kind == "event":
            self.stats.spooled += len(rows)

    async def _spool_or_drop(self, rows: list[InferenceEvent]) -> None:
        try:
            await self._spool("event", rows)
        except (OSError, ValueError) as exc:  # the spool's disk fails too: nothing can keep them
            self.stats.dropped += len(rows)
            log.error("cannot spool %d events (%s); dropped", len(rows), exc)

    async def _quarantine(self, kind: str, refused: list[tuple[Line, StoreDataError]]) -> None:
        """Set rows the store refused as data aside, fsynced, so they block nothing."""
        if not refused:
            return
        now = time.time()
        lines = "".join(
            json.dumps({"kind": kind, "row": r, "error": str(e), "ts": now}, default=str) + "\n"
            for r, e in refused
        )
        async with self._quarantine_lock:
            await asyncio.to_thread(_append_synced, self.quarantine_path, lines)
        self.stats.quarantined += len(refused)
        log.warning(
            "the event store refused %d %s rows as data (%s); moved to %s: %s",
            len(refused),
            kind,
            refused[0][1],
            self.quarantine_path,
            ", ".join(str(r.get("id")) for r, _ in refused),
        )

    async def replay(self) -> int:
        """Move spooled rows into the store; keep the spool if the store is still down.

        Rows the store refuses as data, and lines that cannot be read, go to the quarantine
        file, so one bad row never holds the spool back.
        """
        async with self._spool_lock:
            if not self.spool_path.exists():
                return 0
            lines = (await asyncio.to_thread(self.spool_path.read_text)).splitlines()
            events: list[InferenceEvent] = []
            feedback: list[FeedbackRow] = []
            unreadable: list[tuple[Line, StoreDataError]] = []
            for line in filter(None, lines):
                row = _spool_entry(line)
                if isinstance(row, InferenceEvent):
                    events.append(row)
                elif isinstance(row, FeedbackRow):
                    feedback.append(row)
                else:
                    unreadable.append(({"line": line}, StoreDataError("unreadable spool line")))
            # Events first: feedback rows refer to them.
            stored_events = await self._replay_rows(self.store.write_events, events)
            if stored_events is None:
                return 0
            stored_feedback = await self._replay_rows(self.store.write_feedback, feedback)
            if stored_feedback is None:
                return 0
            await self._quarantine("spool", unreadable)
            await self._quarantine("event", stored_events.refused_lines())
            await self._quarantine("feedback", stored_feedback.refused_lines())
            # Only now: a crash before this line replays again, and inserts ignore duplicates
            # (a row quarantined just before such a crash is quarantined twice, never lost).
            self.spool_path.unlink()
        replayed = stored_events.written
        self.stats.replayed += replayed
        self.stats.written += replayed
        log.info(
            "replayed %d events and %d feedback rows from the spool",
            replayed,
            stored_feedback.written,
        )
        return replayed

    async def _replay_rows(
        self, write: Callable[[Sequence[Row]], None], rows: list[Row]
    ) -> _Stored[Row] | None:
        """Write spooled rows in batches; ``None`` when an outage postpones the replay."""
        total: _Stored[Row] = _Stored()
        for start in range(0, len(rows), self.batch_size):
            stored = await self._store(write, rows[start : start + self.batch_size])
            if stored.outage is not None:
                log.info("spool replay postponed: %s", stored.outage)
                return None
            total.written += stored.written
            total.refused += stored.refused
        return total

    async def _replayer(self) -> None:
        while True:
            await asyncio.sleep(self.replay_interval_s)
            try:
                await self.replay()
            except Exception:  # the replayer must survive anything a bad spool line throws
                log.exception("spool replay failed")

    def _find_in_spool(self, inference_id: str) -> InferenceEvent | None:
        if not self.spool_path.exists():
            return None
        for line in self.spool_path.read_text().splitlines():
            row = _spool_entry(line)
            if isinstance(row, InferenceEvent) and row.id == inference_id:
                return row
        return None


def _spool_entry(line: str) -> InferenceEvent | FeedbackRow | None:
    """A spool line's row; None for a line that cannot be read (torn, or not a row)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("row"), dict):
        return None
    kind, row = entry.get("kind"), entry["row"]
    try:
        if kind == "event":
            return from_dict(InferenceEvent, row)
        if kind == "feedback":
            return from_dict(FeedbackRow, row)
    except TypeError:  # a required column is missing
        return None
    return None


def _append_synced(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
