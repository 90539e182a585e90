"""Each attempt is recorded exactly once, however it ends: ok, error, cancelled, a bug, or a
stream that fails midway and is then closed by its client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.routes import SamplingSpec
from gateway.engines.target import base_target
from gateway.errors import EngineError, UpstreamRejectedError
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.events.stores import SQLiteStore
from gateway.pipelines.runner import PipelineResult
from gateway.routing.assignment import Assignment, Variant
from gateway.routing.attempt_events import Attempt, AttemptEvents
from gateway.routing.context import PipelineResultLike, RequestContext
from gateway.routing.relay import relay
from tests.support.fakes import FakeEngine

VARIANT = Variant("a", "fake", "plain", 1.0, SamplingSpec())
USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


class Recorded:
    """A real event log on SQLite, and the attempts started on it."""

    def __init__(self, log: EventLog, events: AttemptEvents) -> None:
        self.log = log
        self.events = events

    def start(self, *, stream: bool = False, ctx: RequestContext | None = None) -> Attempt:
        assignment = Assignment("r", VARIANT, "sticky", key_hash="k")
        target = base_target("fake", FakeEngine())
        return self.events.start(assignment, VARIANT, target, stream=stream, ctx=ctx)

    async def rows(self) -> list[dict[str, Any]]:
        """The stored rows, each recorded once: ``written`` counts every row handed to the
        store, also a duplicate that its ``ON CONFLICT DO NOTHING`` leaves out."""
        await self.log.flush()
        rows = self.log.store.events("r")
        assert self.log.stats.written == len(rows)
        return rows


@pytest.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[Recorded]:
    log = EventLog(SQLiteStore(tmp_path / "events.db"), tmp_path / "spool", flush_interval_s=0.01)
    await log.start()
    yield Recorded(log, AttemptEvents(models={}, events=log, metrics=Metrics(log)))
    await log.stop()


def result() -> PipelineResult:
    return PipelineResult({"choices": []}, "B", {"B": 2}, 2, dict(USAGE))


def end_again(attempt: Attempt) -> None:
    """Every later way of ending: each must be ignored."""
    attempt.ok(result())
    attempt.failed(EngineError("later"))
    attempt.cancelled()


async def test_ok_is_recorded_once(recorded: Recorded) -> None:
    ctx = RequestContext(deadline=asyncio.get_running_loop().time() + 5)
    with recorded.start(ctx=ctx) as attempt:
        event = attempt.ok(result())
    end_again(attempt)
    [row] = await recorded.rows()
    assert row["id"] == event.id == attempt.id
    assert (row["status"], row["http_status"], row["answer"], row["votes"]) == (
        "ok", 200, "B", {"B": 2},
    )  # fmt: skip
    assert (row["calls"], row["prompt_tokens"], row["completion_tokens"]) == (2, 3, 2)
    assert row["latency_ms"] >= 0 and row["key_hash"] == "k" and row["shadow"] is False
    assert ctx.tokens == 5


@pytest.mark.parametrize(
    ("error", "status", "http_status", "code"),
    [
        (EngineError("engine down"), "error", 502, "upstream_error"),
        (UpstreamRejectedError("bad"), "error", 400, "upstream_rejected"),
        (asyncio.CancelledError(), "cancelled", 499, None),
        (KeyError("a bug"), "error", 502, "upstream_error"),
    ],
    ids=["engine-error", "client-error", "cancelled", "bug"],
)
async def test_a_failure_on_the_way_out_is_recorded_once(
    recorded: Recorded,
    error: BaseException,
    status: str,
    http_status: int,
    code: str | None,
) -> None:
    attempt = recorded.start()
    with pytest.raises(type(error)), attempt:
        raise error
    end_again(attempt)
    [row] = await recorded.rows()
    assert (row["status"], row["http_status"], row["error_code"]) == (status, http_status, code)


async def chunks(*items: bytes | Exception) -> AsyncIterator[bytes]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


async def stream_through(
    attempt: Attempt, first: bytes, rest: AsyncIterator[bytes], *, read: int | None = None
) -> list[bytes]:
    """Relay a stream, read ``read`` chunks (all by default), then close it as a client does."""
    ctx = RequestContext(deadline=asyncio.get_running_loop().time() + 5)
    results: list[PipelineResultLike] = []
    stream = relay(attempt, first, rest, results, ctx, gap_s=5.0, deadline_s=5.0)
    out: list[bytes] = []
    async for chunk in stream:
        out.append(chunk)
        if read is not None and len(out) == read:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return out


INBAND = b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n'
CHUNK = b'data: {"choices": []}\n\n'


async def test_an_in_band_stream_error_then_close_is_recorded_once(recorded: Recorded) -> None:
    attempt = recorded.start(stream=True)
    attempt.first_byte()
    out = await stream_through(attempt, CHUNK, chunks(INBAND), read=2)
    assert out[-1].startswith(b'data: {"error"') and b"[DONE]" not in out[-1]
    end_again(attempt)
    [row] = await recorded.rows()
    assert (row["status"], row["error_code"], row["stream"]) == ("error", "stream_failed", True)
    assert row["ttft_ms"] is not None


async def test_an_engine_failing_midway_then_close_is_recorded_once(recorded: Recorded) -> None:
    attempt = recorded.start(stream=True)
    out = await stream_through(attempt, CHUNK, chunks(EngineError("reset")), read=2)
    assert b'"error"' in out[-1]  # the error event the client gets instead of [DONE]
    [row] = await recorded.rows()
    assert (row["status"], row["error_code"]) == ("error", "upstream_error")


async def test_a_client_closing_a_stream_is_recorded_once(recorded: Recorded) -> None:
    attempt = recorded.start(stream=True)
    await stream_through(attempt, CHUNK, chunks(CHUNK, CHUNK), read=1)
    end_again(attempt)
    [row] = await recorded.rows()
    assert (row["status"], row["http_status"]) == ("cancelled", 499)


async def test_a_finished_stream_is_recorded_once_with_usage_from_its_tail(
    recorded: Recorded,
) -> None:
    attempt = recorded.start(stream=True)
    tail = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}\n\n'
    await stream_through(attempt, CHUNK, chunks(tail, b"data: [DONE]\n\n"))
    end_again(attempt)
    [row] = await recorded.rows()
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == ("ok", 4, 1)
    assert row["calls"] == 1
