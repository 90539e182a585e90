"""Deadlines, retries, the retry budget, cooldowns and stalled streams, at the engine seam.

A scripted engine plays one behaviour per call; the integration layer repeats the promises
against a misbehaving upstream server on loopback and the real vLLM.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.engines.base import Engine
from gateway.errors import (
    EngineError,
    EngineUnavailableError,
    GatewayError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from tests.support.apps import AppFactory
from tests.support.fakes import FakeEngine, completion, sse

CHAT: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}

Step = GatewayError | str  # an error to raise, or "ok", "hang", "stall-after-2"


class ScriptedEngine(FakeEngine):
    """Plays ``script`` one step per call (then answers normally); counts calls and cancels."""

    def __init__(self, model_id: str = "fake", script: list[Step] | None = None) -> None:
        super().__init__(model_id, text="one two three")
        self.script = list(script or [])
        self.calls = 0
        self.cancelled = 0

    def _next(self) -> Step:
        self.calls += 1
        return self.script.pop(0) if self.script else "ok"

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        step = self._next()
        if isinstance(step, GatewayError):
            raise step
        if step == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return completion(f"answer from {self.model_id}")

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        step = self._next()
        if isinstance(step, GatewayError):
            raise step
        chunks = sse(self.text.split(" "))
        try:
            for i, chunk in enumerate(chunks):
                if step == "stall-after-2" and i == 2:
                    await asyncio.sleep(3600)
                yield chunk
                await asyncio.sleep(0.01)
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def config(reliability: str, routes: str = "") -> str:
    return f"""
reliability: {reliability}
models:
  fake: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
  spare: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
{routes}
"""


def events(home: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(home / "events.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM inference_events ORDER BY ts")]


def unavailable() -> EngineUnavailableError:
    return EngineUnavailableError("connection refused", retry_after_s=1)


async def test_one_deadline_bounds_the_whole_request(gateway: AppFactory, tmp_path: Path) -> None:
    engine = ScriptedEngine(script=["hang"])
    async with gateway({"fake": engine}, config("{deadline_s: 0.3}")) as (_, raw):
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await raw.post("/v1/chat/completions", json=CHAT)
        took = loop.time() - started
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "deadline_exceeded"
    assert 0.3 <= took < 0.3 + 10  # bounded: the engine itself never answers
    assert engine.cancelled == 1  # the engine call was cancelled, not left running
    assert engine.calls == 1  # no retry after the deadline
    [event] = events(tmp_path / "home")
    assert event["status"] == "error"
    assert event["error_code"] == "deadline_exceeded"


async def test_retryable_failures_are_retried_before_the_first_byte(
    gateway: AppFactory, tmp_path: Path
) -> None:
    engine = ScriptedEngine(script=[unavailable(), EngineError("HTTP 502")])
    async with gateway({"fake": engine}, config("{max_attempts: 3}")) as (client, _):
        reply = await client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "answer from fake"
    assert engine.calls == 3
    rows = events(tmp_path / "home")
    assert [r["status"] for r in rows] == ["error", "error", "ok"]
    assert [r["attempt"] for r in rows] == [0, 1, 2]


async def test_a_400_is_never_retried(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=[UpstreamRejectedError("prompt too long")])
    async with gateway({"fake": engine}, config("{max_attempts: 3}")) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 400
    assert engine.calls == 1


async def test_upstream_429_is_retried_only_with_a_short_retry_after(
    gateway: AppFactory,
) -> None:
    engine = ScriptedEngine(
        script=[
            UpstreamRateLimitedError("slow down", retry_after_s=0.2),
            "ok",
            UpstreamRateLimitedError("slow down", retry_after_s=None),
            UpstreamRateLimitedError("slow down", retry_after_s=60),
        ]
    )
    async with gateway({"fake": engine}, config("{max_retry_after_s: 5}")) as (_, raw):
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await raw.post("/v1/chat/completions", json=CHAT)
        waited = loop.time() - started
        # No Retry-After: the upstream did not say when, so the client gets the 429.
        second = await raw.post("/v1/chat/completions", json=CHAT)
        # A Retry-After longer than the gateway waits: passed on to the client.
        third = await raw.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 200
    assert waited >= 0.2
    assert second.status_code == 429
    assert "retry-after" not in second.headers
    assert third.status_code == 429
    assert third.headers["retry-after"] == "60"
    assert engine.calls == 4


async def test_the_retry_budget_caps_retries_during_an_outage(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=[unavailable() for _ in range(200)])
    reliability = "{max_attempts: 2, retry_budget: 0.0, cooldown_failures: 1000}"
    async with gateway({"fake": engine}, config(reliability)) as (_, raw):
        for _ in range(30):
            await raw.post("/v1/chat/completions", json=CHAT)
    # 30 requests, a reserve of 10 retries and nothing earned: 40 calls, not 60.
    assert engine.calls == 40


async def test_a_failing_variant_cools_down_and_traffic_goes_to_the_fallback(
    gateway: AppFactory, tmp_path: Path
) -> None:
    routes = """
routes:
  r:
    sticky_key: none
    variants:
      main: {target: fake, weight: 1}
      backup: {target: spare, weight: 0}
    fallback: [backup]
"""
    fake = ScriptedEngine("fake", script=[unavailable() for _ in range(3)])
    spare = ScriptedEngine("spare")
    reliability = "{cooldown_failures: 3, cooldown_s: 60}"
    engines: dict[str, Engine] = {"fake": fake, "spare": spare}
    async with gateway(engines, config(reliability, routes)) as (client, raw):
        for _ in range(3):
            reply = await client.chat.completions.create(**{**CHAT, "model": "r"})
            assert reply.choices[0].message.content == "answer from spare"
        assert fake.calls == 3
        # Cooling down: main is skipped without a call, the fallback answers at once.
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "model": "r"})
        assert resp.status_code == 200
        assert resp.headers["x-switchboard-variant"] == "backup"
        assert fake.calls == 3
    last = events(tmp_path / "home")[-1]
    assert last["variant"] == "backup"
    assert last["fallback_from"] == "main"


async def test_a_direct_model_cooling_down_is_refused_at_once(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=[unavailable() for _ in range(2)])
    reliability = "{max_attempts: 1, cooldown_failures: 2, cooldown_s: 60}"
    async with gateway({"fake": engine}, config(reliability)) as (_, raw):
        for _ in range(2):
            assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 503
        refused = await raw.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "cooling_down"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert engine.calls == 2


async def test_a_variant_recovers_after_its_cooldown(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=[unavailable()])
    reliability = "{max_attempts: 1, cooldown_failures: 1, cooldown_s: 0.2}"
    async with gateway({"fake": engine}, config(reliability)) as (_, raw):
        # The cooldowns' clock moves when the test says, not with a loaded machine's pace.
        now = [1000.0]
        gateway.state.dispatcher.cooldowns.clock = lambda: now[0]
        assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 503
        assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 503
        now[0] += 0.19
        assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 503
        now[0] += 0.02
        assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert engine.calls == 2


async def test_a_stalled_stream_ends_with_an_error_event_and_no_done(
    gateway: AppFactory, tmp_path: Path
) -> None:
    engine = ScriptedEngine(script=["stall-after-2"])
    async with gateway({"fake": engine}, config("{stream_gap_s: 0.3}")) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status_code == 200
    events_seen = [line.removeprefix("data: ") for line in resp.text.split("\n\n") if line.strip()]
    assert "[DONE]" not in events_seen
    assert len(events_seen) == 3  # two chunks, then the error
    error = orjson.loads(events_seen[-1])["error"]
    assert error["code"] == "stream_stalled"
    assert engine.cancelled == 1  # the stalled upstream call was closed
    [event] = events(tmp_path / "home")
    assert event["status"] == "error"
    assert event["error_code"] == "stream_stalled"


async def test_a_stream_past_its_deadline_ends_with_an_error_event(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=["stall-after-2"])
    reliability = "{stream_gap_s: 30, deadline_s: 0.4}"
    async with gateway({"fake": engine}, config(reliability)) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert "[DONE]" not in resp.text
    assert '"deadline_exceeded"' in resp.text


async def test_a_stream_failing_before_its_first_byte_is_retried(gateway: AppFactory) -> None:
    engine = ScriptedEngine(script=[unavailable()])
    async with gateway({"fake": engine}, config("{max_attempts: 2}")) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status_code == 200
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert engine.calls == 2


@pytest.mark.parametrize("gap", [0.05, 0.2])
async def test_a_slow_but_steady_stream_is_not_a_stall(gap: float, gateway: AppFactory) -> None:
    class Drip(FakeEngine):
        async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
            for chunk in sse(["a", "b", "c", "d"]):
                await asyncio.sleep(gap)
                yield chunk
            yield b"data: [DONE]\n\n"

    async with gateway({"fake": Drip("fake")}, config("{stream_gap_s: 0.3}")) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("together", [True, False])
async def test_an_in_band_error_ends_the_stream_without_done(
    together: bool, gateway: AppFactory, tmp_path: Path
) -> None:
    error = b'data: {"error": {"message": "engine died", "type": "InternalServerError"}}\n\n'

    class Failing(FakeEngine):
        async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
            pieces = [*sse(["a", "b"]), error, b"data: [DONE]\n\n"]
            if together:  # one network read can carry every event
                yield b"".join(pieces)
                return
            for piece in pieces:
                yield piece

    async with gateway({"fake": Failing("fake")}, config("{}")) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status_code == 200
    assert "[DONE]" not in resp.text
    # The engine's error event is rewritten into OpenAI's shape with the gateway's code.
    last = orjson.loads(resp.text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["code"] == "stream_failed" and last["error"]["param"] is None
    assert "engine died" in last["error"]["message"]
    assert error.decode() not in resp.text
    [event] = events(tmp_path / "home")
    assert event["status"] == "error"
    assert event["error_code"] == "stream_failed"
