"""The event log: one row per inference (and per feedback), never lost silently.

Default mode: ``record`` puts the event on an in-memory queue and returns at once; a writer task
sends batches to the store from a worker thread. Durable mode: ``record`` also leaves a waiter,
and the response is held (``committed``) until the writer has committed the event or fsynced it
to the spool; the writer then takes whatever is queued at once instead of waiting out the flush
interval, so concurrent requests share one commit (group commit). Either way, when the store
fails the rows are appended to a spool file (fsynced) under ``$GATEWAY_HOME/spool`` and
replayed when the store is back; inserts are idempotent, so a replay that is interrupted and
repeated leaves no duplicates.

When neither the store nor the spool can take a batch (one full disk under both, the default
layout), the writer keeps the batch and tries again with a backoff, while ``record`` goes on
queueing: only a full queue drops rows, and drops are counted (``stats.dropped``) and exported
as a metric. A batch in hand is never cancelled out of existence: ``stop`` spools it, and stop
finishes within its timeout whatever the store does (the stores bound every call).

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
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreDataError, StoreError
from gateway.events.durable import Commitments
from gateway.events.schema import CaptureRow, FeedbackRow, InferenceEvent, from_dict
from gateway.events.spool import Line, Spool
from gateway.events.sql import Store
from gateway.events.writes import Row, Stored, store_rows

log = logging.getLogger(__name__)

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
    #: times a batch could go neither to the store nor to the spool, and was kept to retry
    retries: int = 0
    #: durable responses sent after ``durable_timeout_s`` without their event committed
    durable_timeouts: int = 0


#: what the writer's queue holds: events, and the captures of routes that capture
Queued = InferenceEvent | CaptureRow


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
        durable_timeout_s: float = 10.0,
        retry_max_s: float = 1.0,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.durable = durable
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.replay_interval_s = replay_interval_s
        #: the longest a durable response waits for its event (a disk that takes nothing)
        self.durable_timeout_s = durable_timeout_s
        self.retry_max_s = retry_max_s
        self.stats = EventLogStats()
        self._queue: asyncio.Queue[Queued] = asyncio.Queue(maxsize=max_queue)
        # Events accepted but not yet in the store, so feedback can find them meanwhile.
        self._pending: dict[str, InferenceEvent] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Durable mode: the response of each event waits until it is kept.
        self.commitments = Commitments(durable_timeout_s)
        # The writer's batch while it is being written: what stop() spools if it is cancelled.
        self._in_hand: list[Queued] = []
        self.spool = Spool(spool_dir)

    @property
    def spool_path(self) -> Path:
        return self.spool.path

    @property
    def quarantine_path(self) -> Path:
        return self.spool.quarantine_path

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
        """Write what is queued within ``timeout_s``, spool the rest, then close the store.

        Whatever the store does (a hung database included), this returns within about
        ``timeout_s`` plus the time to append the leftovers to the local spool.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The batch the writer had in hand (it may have reached the store too: replays
        # ignore duplicates), then whatever is still queued.
        leftover, self._in_hand = self._in_hand, []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _WAKE:
                leftover.append(item)
        if leftover:
            try:
                await self._spool("event", leftover)
            except OSError as exc:  # nothing can keep them now: count and name the loss
                self.stats.dropped += len(leftover)
                log.error("cannot spool %d events at shutdown (%s); dropped", len(leftover), exc)
        self._release(leftover)
        self.commitments.release_all()
        # A store that hangs must not hold the shutdown: its own calls are bounded, and we
        # do not wait longer than that for it either.
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.close), timeout_s)
        except (TimeoutError, StoreError) as exc:
            log.warning("event store not closed cleanly: %s", exc or "timed out")

    # -- writing --------------------------------------------------------------------------------

    def record(self, event: InferenceEvent) -> None:
        """Queue one event; never blocks. A full queue drops the event and counts it.

        In durable mode the event also gets a waiter: ``committed(event.id)`` returns once
        it is in the store or the spool.
        """
        self._enqueue(event, wait=self.durable)

    def record_capture(self, row: CaptureRow) -> None:
        """Queue a capture behind its event (same batches, spool and replay); never blocks."""
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.error("event log queue full: dropped the capture of %s", row.id)

    def _enqueue(self, event: InferenceEvent, *, wait: bool) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.error("event log queue full: dropped event %s", event.id)
            return
        self._pending[event.id] = event
        self.stats.queue_depth = self._queue.qsize()
        if wait:
            self.commitments.expect(event.id)

    async def record_durable(self, event: InferenceEvent) -> None:
        """Queue one event and return once it is committed (to the store, or to the spool)."""
        self._enqueue(event, wait=True)
        await self.committed(event.id)

    async def committed(self, inference_id: str) -> None:
        """Return once the event is in the store or the spool (at once if nothing waits);
        after ``durable_timeout_s`` the answer goes out anyway (``stats.durable_timeouts``)."""
        await self.commitments.wait(inference_id)
        self.stats.durable_timeouts = self.commitments.timeouts

    def waiter(self, inference_id: str) -> Callable[[], Awaitable[None]] | None:
        """Durable mode: what a response awaits before its end (None otherwise)."""
        if not self.durable:
            return None
        return functools.partial(self.committed, inference_id)

    async def add_feedback(self, row: FeedbackRow) -> None:
        """Feedback is always written durably: it is rare and a client waits for its 201."""
        await self._write("feedback", self.store.write_feedback, [row])

    async def flush(self) -> None:
        """Return once every queued event is written (or spooled), without waiting out a batch."""
        with contextlib.suppress(asyncio.QueueFull):  # a full queue fills a batch by itself
            self._queue.put_nowait(_WAKE)
        await self._queue.join()

    async def get_event(self, inference_id: str, *, strict: bool = False) -> InferenceEvent | None:
        """The event, from the queue, the store or the spool; None when it is nowhere.

        ``strict``: raise ``StoreError`` when the store cannot be read and the event is not in
        the queue or the spool (whether it exists cannot be told then) instead of None.
        """
        pending = self._pending.get(inference_id)
        if pending is not None:
            return pending
        failure: StoreError | None = None
        try:
            found = await asyncio.to_thread(self.store.get_event, inference_id)
        except StoreError as exc:
            found, failure = None, exc
        if found is not None:
            return from_dict(InferenceEvent, found)
        # Not in the database: it may be spooled, also while the database can be read but not
        # written (locked, full, read-only).
        spooled = await asyncio.to_thread(self.spool.find_event, inference_id)
        if spooled is None and failure is not None and strict:
            raise failure
        return spooled

    async def _write(
        self, kind: str, write: Callable[[Sequence[Row]], None], rows: list[Row]
    ) -> None:
        """Write rows to the store; spool what an outage leaves, quarantine what it refuses."""
        stored = await store_rows(write, rows)
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

    async def _writer(self) -> None:
        while True:
            batch, woken = await self._next_batch()
            # Until it is kept, the batch is in hand: stop() spools it if we are cancelled.
            self._in_hand = batch
            if batch:
                await self._keep(batch)
            self._in_hand = []
            self._release(batch)
            for _ in range(len(batch) + woken):
                self._queue.task_done()
            self.stats.queue_depth = self._queue.qsize()

    async def _next_batch(self) -> tuple[list[Queued], bool]:
        """Up to ``batch_size`` events, and whether a flush asked for them now.

        Batched mode collects until the batch is full or the flush interval is over; durable
        mode takes what is queued at once (responses wait on it), which still groups the
        events of concurrent requests into one commit.
        """
        first = await self._queue.get()
        batch: list[Queued] = [] if first is _WAKE else [first]
        woken = first is _WAKE
        wait_s = 0.0 if self.durable else self.flush_interval_s
        deadline = time.monotonic() + wait_s
        while not woken and len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _WAKE:
                woken = True  # a batch in hand must not wait out the interval at shutdown
            else:
                batch.append(item)
        return batch, woken

    async def _keep(self, batch: list[Queued]) -> None:
        """Write the batch to the store or the spool, trying again until one takes it.

        Neither taking it means the disk under both is full (or gone): the rows wait here,
        and ``record`` keeps queueing behind them, so only a full queue drops.
        """
        delay = 0.05
        while True:
            try:
                events = [r for r in batch if isinstance(r, InferenceEvent)]
                await self._write("event", self.store.write_events, events)
                captures = [r for r in batch if isinstance(r, CaptureRow)]
                if captures:  # after their events, which a join reads them with
                    await self._write("capture", self.store.write_captures, captures)
                return
            except (OSError, ValueError) as exc:
                self.stats.retries += 1
                if self.stats.retries == 1 or delay >= self.retry_max_s:
                    log.error(
                        "neither the event store nor the spool takes %d events (%s); "
                        "keeping them queued and retrying",
                        len(batch),
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _release(self, batch: Sequence[Queued]) -> None:
        """The batch is kept (or given up at shutdown): forget it, and answer its waiters."""
        for event in batch:
            if isinstance(event, CaptureRow):
                continue
            self._pending.pop(event.id, None)
            self.commitments.kept(event.id)

    # -- spool and replay -----------------------------------------------------------------------

    async def _spool(self, kind: str, rows: Sequence[Queued | FeedbackRow]) -> None:
        if not rows:
            return
        await self.spool.append(kind, rows)
        if kind == "event":
            self.stats.spooled += len(rows)

    async def _quarantine(self, kind: str, refused: list[tuple[Line, StoreDataError]]) -> None:
        """Set rows the store refused as data aside, fsynced, so they block nothing."""
        if not refused:
            return
        await self.spool.quarantine(kind, refused)
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
        async with self.spool.lock:
            contents = await self.spool.read()
            if contents is None:
                return 0
            events, feedback, captures = contents.events, contents.feedback, contents.captures
            unreadable = contents.unreadable
            # Events first: feedback rows refer to them.
            stored_events = await self._replay_rows(self.store.write_events, events)
            if stored_events is None:
                return 0
            stored_feedback = await self._replay_rows(self.store.write_feedback, feedback)
            if stored_feedback is None:
                return 0
            stored_captures = await self._replay_rows(self.store.write_captures, captures)
            if stored_captures is None:
                return 0
            await self._quarantine("capture", stored_captures.refused_lines())
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
    ) -> Stored[Row] | None:
        """Write spooled rows in batches; ``None`` when an outage postpones the replay."""
        total: Stored[Row] = Stored()
        for start in range(0, len(rows), self.batch_size):
            stored = await store_rows(write, rows[start : start + self.batch_size])
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
