"""The reliability promises on a real gateway process in front of a misbehaving upstream.

The upstream double (bench/upstream.py) runs on loopback and misbehaves on request: status
codes, hangs, resets after N chunks, in-band error chunks, stalls and slow drips. It also sees
when the gateway closes a connection, which is how cancellation is verified on the engine side.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.upstream import UpstreamDouble
from gateway.admission.keys import hash_key
from tests.support.servers import GatewayProcess, running_gateway

KEY = "sb-live-test-key-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"authorization": f"Bearer {KEY}"}


def config(upstream: str, reliability: str) -> str:
    return f"""
limits: {{max_concurrency: 2}}
reliability: {reliability}
auth:
  keys:
    - {{name: tests, hash: "{hash_key(KEY)}", scopes: [inference, feedback, admin]}}
models:
  m: {{engine: vllm, urls: ["{upstream}"], upstream_model: upstream-model}}
"""


RELIABILITY = (
    "{deadline_s: 3, stream_gap_s: 1, max_attempts: 2, cooldown_failures: 1000, "
    "drain_timeout_s: 15}"
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamDouble]:
    with UpstreamDouble(chunks=4) as double:
        yield double


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("faults-home")
    with running_gateway(home, config(upstream.url, RELIABILITY)) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(upstream: UpstreamDouble) -> None:
    upstream.reset()


def post(gateway: GatewayProcess, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 30)
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=HEADERS, **kwargs)


def sse_events(text: str) -> list[str]:
    return [part.removeprefix("data: ") for part in text.split("\n\n") if part.strip()]


def event_rows(home: Path) -> list[dict[str, Any]]:
    if not (home / "events.db").exists():
        return []
    with sqlite3.connect(home / "events.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM inference_events ORDER BY ts")]


def wait_for_new_row(home: Path, seen: int, status: str, within_s: float = 30.0) -> None:
    """Wait for a row with ``status`` after the ``seen`` first (the batch writer flushes on
    its interval, and an earlier test's row may land first); fails after ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if any(row["status"] == status for row in event_rows(home)[seen:]):
            return
        time.sleep(0.05)
    pytest.fail(f"no new {status} event in {home / 'events.db'} after {within_s} s")


def wait_for_row(home: Path, inference_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with sqlite3.connect(home / "events.db") as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM inference_events WHERE id = ?", (inference_id,))
            row = found.fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.1)
    pytest.fail(f"no event {inference_id}")


def test_retryable_statuses_are_retried_and_a_400_is_not(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"status": 503}])
    assert post(gateway, CHAT).status_code == 200
    assert upstream.stats()["requests"] == 2
    upstream.reset()
    upstream.faults([{"status": 502}, {"status": 504}])
    resp = post(gateway, CHAT)  # two attempts, both fail: the last status is the client's
    assert resp.status_code == 504
    assert resp.json()["error"]["type"] == "api_error"
    upstream.reset()
    upstream.faults([{"status": 400}])
    resp = post(gateway, CHAT)
    assert resp.status_code == 400
    assert upstream.stats()["requests"] == 1
    upstream.reset()
    upstream.faults([{"status": 429, "retry_after": 0.2}])
    assert post(gateway, CHAT).status_code == 200
    assert upstream.stats()["requests"] == 2


def test_a_connection_reset_is_retried(gateway: GatewayProcess, upstream: UpstreamDouble) -> None:
    upstream.faults([{"reset": True}])
    assert post(gateway, CHAT).status_code == 200
    assert upstream.stats()["requests"] == 2


def test_a_hanging_upstream_meets_the_deadline_and_is_cancelled(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"hang": True}])
    started = time.monotonic()
    resp = post(gateway, CHAT)
    took = time.monotonic() - started
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "deadline_exceeded"
    assert 3 <= took < 3 + 10  # bounded: the upstream itself never answers
    stats = wait_for_disconnects(upstream, 1)
    assert stats["disconnects"][0]["elapsed_s"] < 3 + 2


def test_a_stream_reset_midway_ends_with_an_error_event_and_no_done(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"stream_reset_after": 2}])
    resp = post(gateway, {**CHAT, "stream": True})
    assert resp.status_code == 200
    events = sse_events(resp.text)
    assert "[DONE]" not in events
    assert len(events) == 3
    assert orjson.loads(events[-1])["error"]["type"] == "api_error"
    row = wait_for_row(gateway.home, resp.headers["x-switchboard-inference-id"])
    assert row["status"] == "error"
    assert row["stream"] == 1


def test_an_in_band_error_chunk_ends_the_stream_without_done(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"stream_error_after": 2}])
    resp = post(gateway, {**CHAT, "stream": True})
    events = sse_events(resp.text)
    assert "[DONE]" not in events
    # The engine's own error event is rewritten into OpenAI's shape, with the gateway's code.
    error = orjson.loads(events[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "stream_failed" and error["type"] == "api_error"
    assert "injected stream error" in error["message"]
    row = wait_for_row(gateway.home, resp.headers["x-switchboard-inference-id"])
    assert row["status"] == "error"
    assert row["error_code"] == "stream_failed"


def test_a_stalled_stream_is_ended_and_its_upstream_closed(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"stall_after": 2}])
    started = time.monotonic()
    resp = post(gateway, {**CHAT, "stream": True})
    took = time.monotonic() - started
    events = sse_events(resp.text)
    assert "[DONE]" not in events
    assert orjson.loads(events[-1])["error"]["code"] == "stream_stalled"
    assert 1 <= took < 1 + 10  # the code above says the stall, not the deadline, ended it
    wait_for_disconnects(upstream, 1)
    row = wait_for_row(gateway.home, resp.headers["x-switchboard-inference-id"])
    assert row["error_code"] == "stream_stalled"


def test_a_slow_drip_within_the_gap_limit_completes(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"chunk_gap_ms": 400, "chunks": 5}])
    resp = post(gateway, {**CHAT, "stream": True})
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    assert len(events) == 6


def wait_for_disconnects(upstream: UpstreamDouble, count: int, within_s: float = 5.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stats = upstream.stats()
        if stats["disconnected"] >= count:
            return stats
        time.sleep(0.05)
    pytest.fail(f"the upstream saw {upstream.stats()['disconnected']} disconnects, not {count}")


def test_a_client_leaving_a_request_cancels_it_upstream_within_2_s(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"latency_ms": 20_000}])
    seen = len(event_rows(gateway.home))
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, CHAT, timeout=httpx.Timeout(10, read=1.0))
    left_at_s = 1.0  # the client's read timeout, from the request's start
    stats = wait_for_disconnects(upstream, 1)
    assert stats["disconnects"][0]["elapsed_s"] - left_at_s < 2.0
    # No response, so no inference id: its row is the cancelled one it adds.
    wait_for_new_row(gateway.home, seen, "cancelled")


def test_a_client_leaving_a_stream_cancels_it_upstream_within_2_s(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"chunk_gap_ms": 300, "chunks": 100}])
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=HEADERS,
        timeout=30,
    ) as resp:
        lines = resp.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        left_at_s = time.monotonic() - started
    stats = wait_for_disconnects(upstream, 1)
    assert stats["disconnects"][0]["elapsed_s"] - left_at_s < 2.0
    row = wait_for_row(gateway.home, resp.headers["x-switchboard-inference-id"])
    assert row["status"] == "cancelled"


def test_a_stream_holds_a_concurrency_slot_until_it_ends(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"chunk_gap_ms": 200, "chunks": 10}] * 2)
    url = f"{gateway.url}/v1/chat/completions"
    body = {**CHAT, "stream": True}
    with (
        httpx.stream("POST", url, json=body, headers=HEADERS, timeout=30) as first,
        httpx.stream("POST", url, json=body, headers=HEADERS, timeout=30) as second,
    ):
        assert first.status_code == second.status_code == 200
        refused = post(gateway, CHAT)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        first.read()
        second.read()
    assert post(gateway, CHAT).status_code == 200


def test_the_key_never_reaches_the_log_or_the_event_log(gateway: GatewayProcess) -> None:
    assert post(gateway, CHAT).status_code == 200
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code == 401
    time.sleep(0.5)
    assert KEY not in gateway.log()
    for path in gateway.home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.disruptive
def test_sigterm_drains_in_flight_streams_and_flushes_the_log(
    upstream: UpstreamDouble, tmp_path: Path
) -> None:
    # A gateway of its own: this one is stopped by the test.
    reliability = "{stream_gap_s: 5, drain_timeout_s: 20}"
    events_config = "events: {flush_interval_s: 30, batch_size: 10000}\n"
    with running_gateway(tmp_path, events_config + config(upstream.url, reliability)) as gw:
        upstream.faults([{"chunk_gap_ms": 250, "chunks": 40}])  # a 10 s stream
        received: list[str] = []

        def read_stream() -> None:
            with httpx.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers=HEADERS,
                timeout=30,
            ) as resp:
                received.extend(resp.iter_lines())

        reader = threading.Thread(target=read_stream)
        reader.start()
        deadline = time.monotonic() + 10
        while upstream.stats()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert post(gw, CHAT).status_code == 200  # logged, waiting in the batch writer
        gw.process.send_signal(signal.SIGTERM)
        # No new requests once draining has begun: wait for the listener to close (a loaded
        # machine takes its time), with the stream still in flight.
        deadline, served = time.monotonic() + 20, 0
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=HEADERS, timeout=2)
            except httpx.ConnectError:
                break
            served += 1  # came before the signal was handled: logged like any other
            time.sleep(0.05)
        else:
            pytest.fail("the gateway still accepted connections 20 s after SIGTERM")
        assert reader.is_alive()  # the refusal came while the stream was being drained
        reader.join(30)
        gw.process.wait(30)
    data = [line.removeprefix("data: ") for line in received if line.startswith("data: ")]
    assert data[-1] == "[DONE]"  # the in-flight stream finished
    assert len(data) == 41
    with sqlite3.connect(tmp_path / "events.db") as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM inference_events")]
    # Every request is in the database: the batch was flushed on the way out.
    assert statuses == ["ok"] * (2 + served)
    assert "Shutting down" in gw.log()


# -- an engine answering 200 with something that is not an answer ------------------------------


@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        ({"raw_body": "<html>not json</html>", "content_type": "text/html"}, False),
        ({"raw_body": '{"choices": [], "usage": "lots"}'}, False),
        ({"raw_body": '["a", "list"]'}, False),
        ({"raw_body": '{"id": "not a stream"}'}, True),
    ],
    ids=["not-json", "usage-of-the-wrong-type", "not-an-object", "non-sse-200-to-a-stream"],
)
def test_a_200_that_is_no_answer_is_a_502_logged_as_an_error(
    gateway: GatewayProcess, upstream: UpstreamDouble, fault: dict[str, Any], stream: bool
) -> None:
    upstream.faults([fault, fault])  # max_attempts is 2: both attempts get it
    resp = post(gateway, {**CHAT, "stream": stream})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_error" and error["type"] == "api_error"
    row = wait_for_row(gateway.home, resp.headers["x-switchboard-inference-id"])
    assert row["status"] == "error" and row["http_status"] == 502
    assert "Traceback" not in gateway.log()


def test_the_engines_retry_after_is_passed_on(
    gateway: GatewayProcess, upstream: UpstreamDouble
) -> None:
    upstream.faults([{"status": 503, "retry_after": 7}] * 2)
    resp = post(gateway, CHAT)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"


# -- cooldowns: a blip is one failure; a refusal is tied to its route ---------------------------

ROUTED = """
  r:
    variants:
      only: {target: m, weight: 1}
"""


@pytest.fixture(scope="module")
def routed(
    upstream: UpstreamDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("routed-home")
    reliability = "{max_attempts: 1, cooldown_failures: 2, cooldown_s: 60, deadline_s: 10}"
    text = config(upstream.url, reliability) + "routes:" + ROUTED
    with running_gateway(home, text) as running:
        yield running


def post_to(gateway: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    url = f"{gateway.url}/v1/chat/completions"
    return httpx.post(url, json=body, headers=HEADERS, timeout=30)


def test_one_blip_failing_requests_in_flight_is_one_failure(
    routed: GatewayProcess, upstream: UpstreamDouble
) -> None:
    # Two requests in flight at once fail together (cooldown_failures is 2).
    upstream.faults([{"barrier": 2, "status": 502}] * 2)
    body = {**CHAT, "model": "r"}
    with ThreadPoolExecutor(2) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: post_to(routed, body), range(2))]
    assert statuses == [502, 502]
    resp = post_to(routed, body)
    assert resp.status_code == 200, resp.text  # the engine is fine: no cooldown


def test_a_refusal_while_cooling_is_tied_to_its_route(
    routed: GatewayProcess, upstream: UpstreamDouble
) -> None:
    body = {**CHAT, "model": "r"}
    upstream.faults([{"status": 502}] * 2)
    for _ in range(2):  # one after another: two distinct failures
        assert post_to(routed, body).status_code == 502
    refused = post_to(routed, body)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "cooling_down"
    row = wait_for_row(routed.home, refused.headers["x-switchboard-inference-id"])
    assert row["route"] == "r" and row["error_code"] == "cooling_down"


# -- shutdown: streams cut by the drain end with an error event --------------------------------


@pytest.mark.disruptive
def test_streams_cut_at_the_end_of_the_drain_end_with_an_error_event(
    upstream: UpstreamDouble, tmp_path: Path
) -> None:
    reliability = "{stream_gap_s: 30, deadline_s: 60, drain_timeout_s: 1}"
    with running_gateway(tmp_path, config(upstream.url, reliability)) as gw:
        upstream.faults([{"chunk_gap_ms": 200, "chunks": 500}])
        received: list[str] = []
        first = threading.Event()

        def read_stream() -> None:
            with httpx.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers=HEADERS,
                timeout=30,
            ) as resp:
                for line in resp.iter_lines():
                    received.append(line)
                    first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(15)
        gw.process.send_signal(signal.SIGTERM)
        reader.join(30)
        gw.process.wait(30)
    data = [line.removeprefix("data: ") for line in received if line.startswith("data: ")]
    assert data[-1] != "[DONE]"
    error = orjson.loads(data[-1])["error"]
    assert error["code"] == "shutting_down"
    with sqlite3.connect(tmp_path / "events.db") as db:
        row = db.execute("SELECT status, http_status, error_code FROM inference_events").fetchone()
    assert row == ("error", 503, "shutting_down")
