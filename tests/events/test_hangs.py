"""A database that hangs instead of refusing: the real PostgreSQL server, SIGSTOPped.

A stopped server still completes TCP handshakes (the kernel does that) but answers nothing, so
only a bound on every statement gets the gateway out: the store gives up within its timeouts,
the event log spools what it cannot write (never losing the batch it had in hand), shutdown
finishes within its budget, the API answers within seconds, and once the server is continued
every row goes in exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.events.log import EventLog
from gateway.events.schema import InferenceEvent
from gateway.events.stores import PostgresStore
from tests.support.apps import InProcessGateway
from tests.support.postgres import PostgresServer

#: short bounds for the test (the defaults are 3 s to connect and 5 s per statement)
TIMEOUTS = "connect_timeout=1&options=-c%20statement_timeout%3D1000"


def url(server: PostgresServer) -> str:
    return f"{server.url}?{TIMEOUTS}"


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every process it started (the backends serving our connections)."""
    head = (server.datadir / "postmaster.pid").read_text().split()[0]
    root = int(head)
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(entry))
    return pids


@contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """The server SIGSTOPped (every process of it), and SIGCONTed whatever happens."""
    pids = server_pids(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def event(i: int) -> InferenceEvent:
    return InferenceEvent(id=f"hang-{i}", ts=float(i), route="r", variant="a", status="ok")


def in_thread(call: Any, timeout_s: float) -> tuple[bool, BaseException | None]:
    """Run ``call`` in a thread: (whether it finished within ``timeout_s``, what it raised)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), (raised[0] if raised else None)


def test_every_statement_is_bounded_when_the_server_hangs(postgres: PostgresServer) -> None:
    store = PostgresStore(url(postgres))
    store.write_events([event(0)])  # connected: the hang meets an open connection
    with frozen(postgres):
        started = time.monotonic()
        finished, raised = in_thread(lambda: store.write_events([event(1)]), 15)
        assert finished, "a write to a hung server did not return"
        assert isinstance(raised, StoreError)
        # A new connection to the hung server is bounded too (connect_timeout).
        finished, raised = in_thread(lambda: store.get_event("hang-0"), 15)
        assert finished and isinstance(raised, StoreError)
        assert time.monotonic() - started < 12
    store.close()


async def test_a_hung_server_loses_nothing_and_shutdown_finishes(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    store = PostgresStore(url(postgres))
    log = EventLog(store, tmp_path / "spool", flush_interval_s=0.01, batch_size=16)
    await log.start()
    log.record(event(100))
    await log.flush()
    with frozen(postgres):
        for i in range(101, 251):
            log.record(event(i))
        started = time.monotonic()
        # Shutdown within its budget whatever the store does: the rest goes to the spool.
        await asyncio.wait_for(log.stop(timeout_s=2), 15)
        assert time.monotonic() - started < 10
    assert log.stats.dropped == 0
    check = EventLog(PostgresStore(url(postgres)), tmp_path / "spool")
    await check.start()  # replays the spool into the continued server
    await check.stop()
    rows = PostgresStore(url(postgres))
    ids = [e["id"] for e in rows.events("r") if str(e["id"]).startswith("hang-")]
    rows.close()
    wanted = {f"hang-{i}" for i in range(100, 251)}
    assert wanted <= set(ids) and len([i for i in ids if i in wanted]) == len(wanted)


ROUTED = """
models:
  fake: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
events: {{url: "{url}"}}
routes:
  ab:
    variants:
      a: {{target: fake, weight: 1}}
    experiment:
      metrics: {{correct: {{type: boolean}}}}
"""


@pytest.fixture
def gateway(tmp_path: Path) -> InProcessGateway:
    return InProcessGateway(tmp_path)


async def test_the_api_answers_while_the_database_hangs(
    postgres: PostgresServer, gateway: InProcessGateway
) -> None:
    async with gateway(config=ROUTED.format(url=url(postgres))) as (client, raw):
        chat = await client.chat.completions.with_raw_response.create(
            model="ab", messages=[{"role": "user", "content": "hi"}]
        )
        inference_id = chat.headers["x-switchboard-inference-id"]
        await gateway.state.events.flush()
        with frozen(postgres):
            started = time.monotonic()
            fb = await asyncio.wait_for(
                raw.post(
                    "/v1/feedback",
                    json={"inference_id": inference_id, "name": "correct", "value": True},
                ),
                20,
            )
            experiments = await asyncio.wait_for(raw.get("/v1/experiments/ab"), 20)
            elapsed = time.monotonic() - started
        # Feedback is spooled (201) or refused for now (503); never a hang.
        assert fb.status_code in (201, 503), fb.text
        assert experiments.status_code in (200, 503), experiments.text
        assert elapsed < 15
