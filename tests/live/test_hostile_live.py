"""Hostile input on a real ``gateway serve``: raw sockets for abuse of HTTP itself.

Each test waits for a condition (a reply, a closed socket, a row in the event log), never for a
duration, and every loop is bounded in count and time, so the suite holds on a loaded machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.upstream import UpstreamDouble
from gateway.admission.keys import hash_key
from gateway.engines.supervisor import free_port
from tests.support.servers import GatewayProcess, running_gateway, stop_gateway, wait_ready

REPO = Path(__file__).resolve().parents[2]
KEY = "sb-hostile-key-0123456789"
OTHER = "sb-hostile-other-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SERVER = "{header_timeout_s: 1, body_timeout_s: 2, max_header_bytes: 16384}"


def config(upstream: str, server: str = SERVER, limits: str = "{max_concurrency: 2}") -> str:
    return f"""
server: {server}
limits: {limits}
auth:
  keys:
    - {{name: tests, hash: "{hash_key(KEY)}", scopes: [inference, feedback, admin]}}
    - {{name: other, hash: "{hash_key(OTHER)}", scopes: [inference]}}
models:
  m: {{engine: vllm, urls: ["{upstream}"], upstream_model: upstream-model}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamDouble]:
    with UpstreamDouble(chunks=4) as double:
        yield double


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("hostile-home")
    with running_gateway(home, config(upstream.url)) as running:
        yield running


def address(gateway: GatewayProcess) -> tuple[str, int]:
    host, port = gateway.url.removeprefix("http://").split(":")
    return host, int(port)


@contextlib.contextmanager
def connection(gateway: GatewayProcess, timeout_s: float = 10) -> Iterator[socket.socket]:
    sock = socket.create_connection(address(gateway), timeout=timeout_s)
    try:
        yield sock
    finally:
        sock.close()


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read until the server closes or its Content-Length is in."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it sends first)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def is_openai_error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def rows(home: Path) -> list[dict[str, Any]]:
    path = home / "events.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM inference_events ORDER BY ts")]
        except sqlite3.OperationalError:
            return []


def wait_for_row(home: Path, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [r for r in rows(home) if match(r)]
        if found:
            return found[-1]
        time.sleep(0.1)
    pytest.fail("no such event in the log")


AUTH = {"authorization": f"Bearer {KEY}"}


def chat_request(extra: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    payload = body if body is not None else orjson.dumps(CHAT)
    headers = {
        "host": "127.0.0.1",
        "content-type": "application/json",
        "content-length": str(len(payload)),
        **AUTH,
        **(extra or {}),
    }
    return request("POST", "/v1/chat/completions", headers, payload)


# -- item 6: header size, read timeouts, connections -------------------------------------------


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_oversized_headers_get_431(gateway: GatewayProcess, size: int) -> None:
    with connection(gateway) as sock:
        sock.sendall(request("GET", "/health", {"host": "127.0.0.1", "x-big": "a" * size}))
        status, _, body = read_reply(sock)
    assert status == 431
    assert is_openai_error(body)["code"] == "request_header_fields_too_large"


def test_a_silent_connection_is_closed(gateway: GatewayProcess) -> None:
    with connection(gateway) as sock:
        assert closed_within(sock, 10)  # header_timeout_s is 1


def test_headers_trickled_past_the_header_timeout_are_cut(gateway: GatewayProcess) -> None:
    with connection(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"x-a: b\r\n")
            except OSError:
                closed = True
                break
            closed = closed_within(sock, 0.3)
        assert closed


def test_malformed_http_gets_openai_json(gateway: GatewayProcess) -> None:
    with connection(gateway) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = read_reply(sock)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert is_openai_error(body)["type"] == "invalid_request_error"


def test_one_client_cannot_take_every_descriptor(upstream: UpstreamDouble, tmp_path: Path) -> None:
    # A gateway of its own under a low open-file limit it may not raise.
    home = tmp_path / "fd-home"
    home.mkdir()
    (home / "gateway.yaml").write_text(config(upstream.url, "{header_timeout_s: 60}"))
    port = free_port()
    env = {**os.environ, "GATEWAY_HOME": str(home), "GATEWAY_PORT": str(port)}
    env["PYTHONPATH"] = str(REPO)  # this checkout's gateway, whatever the working directory
    command = f"ulimit -n 256 && exec {sys.executable} -m gateway serve --config gateway.yaml"
    log_path = home / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", "-c", command], cwd=home, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    gw = GatewayProcess(f"http://127.0.0.1:{port}", home, process, log_path)
    held: list[socket.socket] = []
    try:
        wait_ready(gw, 60)
        for _ in range(300):  # more half-sent requests than the process has descriptors
            try:
                sock = socket.create_connection(address(gw), timeout=5)
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n")
                held.append(sock)
            except OSError:
                break
        health = httpx.get(f"{gw.url}/health", timeout=10)
        assert health.status_code == 200
        chat = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
        assert chat.status_code in (200, 503)  # answered, not hung or refused by the kernel
    finally:
        for sock in held:
            sock.close()
        stop_gateway(gw)


# -- item 5: every request that reaches the application is one event ----------------------------


def test_a_413_from_content_length_is_an_event(gateway: GatewayProcess) -> None:
    with connection(gateway) as sock:
        sock.sendall(chat_request({"content-length": "50000000"}, body=b""))
        status, headers, body = read_reply(sock)
    assert status == 413
    assert is_openai_error(body)["code"] == "request_too_large"
    inference = headers["x-switchboard-inference-id"]
    wait_for_row(gateway.home, lambda r: r["id"] == inference and r["http_status"] == 413)


def test_a_client_leaving_mid_body_is_one_event_and_no_traceback(gateway: GatewayProcess) -> None:
    before = len(rows(gateway.home))
    with connection(gateway) as sock:
        sock.sendall(chat_request({"content-length": "1000"}, body=b'{"model": "m",'))
        time.sleep(0.2)  # let the body read begin (harmless if it has not)
    wait_for_row(gateway.home, lambda r: r["http_status"] == 499)
    assert len(rows(gateway.home)) == before + 1
    assert "Traceback" not in gateway.log()


# -- item 7: a slow body holds no slot ---------------------------------------------------------


def test_trickled_bodies_hold_no_concurrency_slot(gateway: GatewayProcess) -> None:
    socks = []
    try:
        for _ in range(8):  # max_concurrency is 2
            sock = socket.create_connection(address(gateway), timeout=10)
            sock.sendall(chat_request({"content-length": "1000"}, body=b"{"))
            socks.append(sock)
        other = {"authorization": f"Bearer {OTHER}"}
        resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=other)
        assert resp.status_code == 200
        status, _, body = read_reply(socks[0])  # body_timeout_s is 2
        assert status == 408
        assert is_openai_error(body)["code"] == "request_timeout"
    finally:
        for sock in socks:
            sock.close()


# -- item 8: cross-site requests and DNS rebinding ---------------------------------------------


def test_a_post_that_is_not_json_gets_415(gateway: GatewayProcess) -> None:
    for path in ("/v1/chat/completions", "/v1/feedback"):
        resp = httpx.post(
            f"{gateway.url}{path}",
            content=orjson.dumps(CHAT),
            headers={**AUTH, "content-type": "text/plain"},
        )
        assert resp.status_code == 415, path
        assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_a_foreign_host_is_refused(gateway: GatewayProcess) -> None:
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={**AUTH, "host": "attacker.example"},
    )
    assert resp.status_code == 421
    assert resp.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{gateway.url}/health", headers={"host": "localhost:1"}).status_code == 200


def test_a_cross_origin_post_is_refused(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    resp = httpx.post(url, json=CHAT, headers={**AUTH, "origin": "http://attacker.example"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "cross_origin_refused"
    same = httpx.post(url, json=CHAT, headers={**AUTH, "origin": gateway.url})
    assert same.status_code == 200
    assert "access-control-allow-origin" not in same.headers


# -- item 9: failed authentications ------------------------------------------------------------


def test_failed_authentications_are_counted_and_throttled(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    statuses = []
    # The guesser comes from an address of its own (all of 127/8 is loopback): the throttle is
    # per client address, and the other tests' address must stay unthrottled.
    guesser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    for _ in range(40):
        resp = guesser.post(url, json=CHAT, headers={"authorization": "Bearer sb-guess"})
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["retry-after"]) >= 1
            break
    guesser.close()
    assert statuses[0] == 401
    assert statuses[-1] == 429
    metrics = httpx.get(f"{gateway.url}/metrics", headers=AUTH).text
    line = next(li for li in metrics.splitlines() if li.startswith("switchboard_auth_failures"))
    assert float(line.split()[-1]) >= len(statuses) - 1
    # Another address, with a good key, is not throttled by it.
    good = httpx.post(url, json=CHAT, headers={"authorization": f"Bearer {OTHER}"})
    assert good.status_code == 200
