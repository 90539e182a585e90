"""The event log: one row per inference (and per feedback), never lost silently.

Default mode: ``record`` puts the event on an in-memory queue and returns at once; a writer task
sends batches to the store from a worker thread. Durable mode: ``record_durable`` commits
before the response goes out. Either way, when the store fails the rows are appended to a spool
file (fsynced) under ``$GATEWAY_HOME/spool`` and replayed when the store is back; inserts are
idempotent, so a replay that is interrupted and repeated leaves no duplicates. Only a full
queue drops rows, and drops are counted (``stats.dropped``) and exported as a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.stores import Store, StoreError

log = logging.getLogger(__name__)

SPOOL_NAME = "spool.jsonl"
#: put on the queue by ``flush``: the writer writes the batch in hand at once
_WAKE: dict[str, Any] = {"id": "flush"}


@dataclass
class EventLogStats:
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    queue_depth: int = 0


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
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queue)
        # Events accepted but not yet in the store, so feedback can find them meanwhile.
        self._pending: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._spool_lock = asyncio.Lock()

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / SPOOL_NAME

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

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks. A full queue drops the event and counts it."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.error("event log queue full: dropped event %s", event.get("id"))
            return
        self._pending[event["id"]] = event
        self.stats.queue_depth = self._queue.qsize()

    async def record_durable(self, event: dict[str, Any]) -> None:
        """Commit one event before returning (to the store, or to the spool if it is down)."""
        await self._write("event", [event])

    async def add_feedback(self, row: dict[str, Any]) -> None:
        """Feedback is always written durably: it is rare and a client waits for its 201."""
        await self._write("feedback", [row])

    async def flush(self) -> None:
        """Return once every queued event is written (or spooled), without waiting out a batch."""
        with contextlib.suppress(asyncio.QueueFull):  # a full queue fills a batch by itself
            self._queue.put_nowait(_WAKE)
        await self._queue.join()

    async def get_event(self, inference_id: str) -> dict[str, Any] | None:
        pending = self._pending.get(inference_id)
        if pending is not None:
            return pending
        try:
            return await asyncio.to_thread(self.store.get_event, inference_id)
        except StoreError:
            return self._find_in_spool(inference_id)

    async def _write(self, kind: str, rows: list[dict[str, Any]]) -> None:
        write = self.store.write_events if kind == "event" else self.store.write_feedback
        try:
            await asyncio.to_thread(write, rows)
            if kind == "event":
                self.stats.written += len(rows)
        except StoreError as exc:
            log.warning("event store unavailable (%s); spooling %d %s rows", exc, len(rows), kind)
            await self._spool(kind, rows)

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
                    await self._write("event", batch)
            finally:
                for event in batch:
                    self._pending.pop(event["id"], None)
                    self._queue.task_done()
                if woken:
                    self._queue.task_done()
                self.stats.queue_depth = self._queue.qsize()

    # -- spool and replay -----------------------------------------------------------------------

    async def _spool(self, kind: str, rows: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps({"kind": kind, "row": r}, default=str) + "\n" for r in rows)
        async with self._spool_lock:
            await asyncio.to_thread(_append_synced, self.spool_path, lines)
        if kind == "event":
            self.stats.spooled += len(rows)

    async def replay(self) -> int:
        """Move spooled rows into the store; keep the spool if the store is still down."""
        async with self._spool_lock:
            if not self.spool_path.exists():
                return 0
            entries = [
                json.loads(line) for line in self.spool_path.read_text().splitlines() if line
            ]
            events = [e["row"] for e in entries if e["kind"] == "event"]
            feedback = [e["row"] for e in entries if e["kind"] == "feedback"]
            try:
                # Events first: feedback rows refer to them.
                for start in range(0, len(events), self.batch_size):
                    chunk = events[start : start + self.batch_size]
                    await asyncio.to_thread(self.store.write_events, chunk)
                await asyncio.to_thread(self.store.write_feedback, feedback)
            except StoreError as exc:
                log.info("spool replay postponed: %s", exc)
                return 0
            # Only now: a crash before this line replays again, and inserts ignore duplicates.
            self.spool_path.unlink()
        self.stats.replayed += len(events)
        self.stats.written += len(events)
        log.info(
            "replayed %d events and %d feedback rows from the spool", len(events), len(feedback)
        )
        return len(events)

    async def _replayer(self) -> None:
        while True:
            await asyncio.sleep(self.replay_interval_s)
            try:
                await self.replay()
            except Exception:  # the replayer must survive anything a bad spool line throws
                log.exception("spool replay failed")

    def _find_in_spool(self, inference_id: str) -> dict[str, Any] | None:
        if not self.spool_path.exists():
            return None
        for line in self.spool_path.read_text().splitlines():
            entry = json.loads(line)
            if entry["kind"] == "event" and entry["row"].get("id") == inference_id:
                row: dict[str, Any] = entry["row"]
                return row
        return None


def _append_synced(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
