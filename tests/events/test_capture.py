"""Capture on scripted engines: opt-in per route, sampled, redacted before anything is written,
and expired rows deleted."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config.loop import CaptureSpec
from gateway.errors import EngineError
from gateway.events.capture import (
    MAX_EVENT_BYTES,
    REDACTED,
    Redactor,
    StreamText,
    purge_expired,
)
from gateway.events.schema import CaptureRow
from gateway.events.stores import SQLiteStore
from tests.support.apps import InProcessGateway
from tests.support.fakes import FakeEngine, sse

SECRET = "555-867-5309"
CONFIG = """
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  kept:
    capture: {sample_rate: 1, retention_days: 7, redact: ['\\d{3}-\\d{3}-\\d{4}', 'secret-\\w+']}
    variants: {a: {target: fake, weight: 1}}
  private:
    variants: {a: {target: fake, weight: 1}}
"""


def _database_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.glob("events.db*"))


async def test_captured_text_is_redacted_before_it_is_written(gateway: InProcessGateway) -> None:
    engine = FakeEngine(text=f"I will call {SECRET} with secret-sauce")
    async with gateway({"fake": engine}, CONFIG) as (client, _):
        for route in ("kept", "private"):
            reply = await client.chat.completions.create(
                model=route,
                messages=[{"role": "user", "content": f"my number is {SECRET}, {route}"}],
            )
        await gateway.state.events.flush()
        kept_id = None
        for row in gateway.state.events.store.captures("kept"):
            kept_id = row["id"]
            assert row["messages"] == [
                {"role": "user", "content": f"my number is {REDACTED}, kept"}
            ]
            assert row["response"] == f"I will call {REDACTED} with {REDACTED}"
        assert kept_id is not None
        assert gateway.state.events.store.captures("private") == []
        assert reply.id  # the private route answered, and was not captured
    raw = _database_bytes(gateway.home)
    assert SECRET.encode() not in raw and b"secret-sauce" not in raw
    assert b"my number is" in raw  # the capture itself is there


async def test_no_capture_section_no_captures(gateway: InProcessGateway) -> None:
    async with gateway() as (client, _):
        await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hello"}]
        )
        await gateway.state.events.flush()
    store = SQLiteStore(gateway.home / "events.db")
    try:
        assert store._query("SELECT COUNT(*) FROM captures")[1][0][0] == 0
    finally:
        store.close()


def test_redaction_rules_apply_in_order() -> None:
    redact = Redactor([r"\b\d{4}\b", r"card [A-Z]+"])
    assert redact("card XYZ pin 1234") == f"{REDACTED} pin {REDACTED}"


def test_expired_captures_are_deleted(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    now = time.time()
    old = CaptureRow(id="inf-old", ts=now - 8 * 86400, route="kept", messages=[])
    new = CaptureRow(id="inf-new", ts=now - 86400, route="kept", messages=[])
    store.write_captures([old, new])
    purge_expired(store, {"kept": CaptureSpec(sample_rate=1, retention_days=7)}, now)
    assert [r["id"] for r in store.captures("kept")] == ["inf-new"]
    store.close()


async def test_a_stream_is_captured_as_the_text_its_client_read(
    gateway: InProcessGateway,
) -> None:
    """The deltas are joined on the way through and redacted like any capture; a stream that
    fails midway is not captured (its event is an error)."""
    engine = FakeEngine(text=f"call {SECRET} now please")
    async with gateway({"fake": engine}, CONFIG) as (client, _):
        stream = await client.chat.completions.create(
            model="kept", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        read = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        engine.fail_with, engine.fail_stream_after = EngineError("down midway"), 2
        broken = await client.chat.completions.create(
            model="kept", messages=[{"role": "user", "content": "again"}], stream=True
        )
        with pytest.raises(openai.APIError, match="down midway"):
            async for _ in broken:
                pass
        await gateway.state.events.flush()
        rows = gateway.state.events.store.captures("kept")
    assert SECRET in read
    assert [r["response"] for r in rows] == [read.replace(SECRET, REDACTED)]
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_stream_text_joins_events_split_across_chunks() -> None:
    def event(content: str, index: int = 0) -> bytes:
        choice = {"index": index, "delta": {"content": content}}
        return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"

    whole = event("Hel") + event("other choice", index=1) + event("lo") + b"data: [DONE]\n\n"
    text = StreamText()
    for start in range(0, len(whole), 7):  # cut anywhere, mid-event included
        text.feed(whole[start : start + 7])
    assert text.text() == "Hello"


class EndlessEventEngine(FakeEngine):
    """An upstream that sends one good delta, then an event longer than the reader holds."""

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        yield sse(["kept"])[0]
        piece = b":" + b"x" * 65_535  # an SSE comment line that goes on and on
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            yield piece
        yield b"\n\n" + sse(["after"])[0] + b"data: [DONE]\n\n"


async def test_a_stream_whose_event_never_ends_is_not_captured(
    gateway: InProcessGateway,
) -> None:
    """The reader gives up past MAX_EVENT_BYTES instead of growing; partial text is not
    stored as the response, and the client still gets every byte."""
    async with gateway({"fake": EndlessEventEngine()}, CONFIG) as (client, _):
        stream = await client.chat.completions.create(
            model="kept", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        read = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await gateway.state.events.flush()
        assert gateway.state.events.store.captures("kept") == []
    assert read == "keptafter"


def test_stream_text_drops_what_it_held_when_an_event_overflows() -> None:
    text = StreamText()
    text.feed(sse(["kept"])[0])
    text.feed(b"x" * (MAX_EVENT_BYTES + 1))
    text.feed(b"\n\n" + sse(["after"])[0])
    assert text.overflowed and text.text() == ""
