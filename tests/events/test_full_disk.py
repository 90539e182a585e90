"""A full disk under both the database and the spool (the default layout: both in GATEWAY_HOME).

Nothing can take a row then, but the queue can: rows stay in it and are retried until the disk
has room again; only a full queue drops. Proved on a real tmpfs filled to the last byte (we run
as root; skipped, saying why, where mounting is refused), and at the store seam with a store
that raises disk-full while the spool cannot be opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.events.log import EventLog
from gateway.events.schema import InferenceEvent
from gateway.events.stores import SQLiteStore

N = 200


def event(i: int) -> InferenceEvent:
    return InferenceEvent(id=f"disk-{i}", ts=float(i), route="r", variant="a", status="ok")


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte (unbuffered: nothing left to flush)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def db_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
        return int(conn.execute("SELECT count(*) FROM inference_events").fetchone()[0])


async def test_a_full_shared_disk_keeps_rows_queued_until_it_has_room(small_disk: Path) -> None:
    home = small_disk
    log = EventLog(
        SQLiteStore(home / "events.db"), home / "spool", flush_interval_s=0.01, batch_size=64
    )
    await log.start()
    filler = fill(home)
    try:
        for i in range(N):
            log.record(event(i))
        # The writer has met the full disk (the database and the spool both refused).
        await until(lambda: log.stats.retries > 0)
        assert log.stats.dropped == 0
    finally:
        filler.unlink()
    await asyncio.wait_for(log.flush(), 30)
    await log.stop()
    assert log.stats.dropped == 0
    assert db_count(home / "events.db") == N


class FullStore(SQLiteStore):
    """The real store, refusing every write as a full disk would until ``full`` is cleared."""

    full = True

    def write_events(self, rows: Sequence[InferenceEvent]) -> None:
        if self.full:
            raise StoreError("database or disk is full")
        super().write_events(rows)


async def test_rows_wait_in_the_queue_while_store_and_spool_fail(tmp_path: Path) -> None:
    store = FullStore(tmp_path / "events.db")
    spool = tmp_path / "spool"
    log = EventLog(store, spool, flush_interval_s=0.01, batch_size=16, max_queue=100)
    await log.start()
    # The spool cannot be written: its folder is a file now (ENOTDIR, as a dead disk would).
    shutil.rmtree(spool)
    spool.write_text("not a folder")
    try:
        for i in range(150):
            log.record(event(i))
        await until(lambda: log.stats.retries > 0)
        # Only what did not fit in the queue (and the batch in hand) is dropped.
        assert log.stats.dropped <= 150 - 100
        kept = 150 - log.stats.dropped
    finally:
        os.unlink(spool)
        spool.mkdir()
    store.full = False
    await asyncio.wait_for(log.flush(), 30)
    await log.stop()
    assert db_count(tmp_path / "events.db") == kept
