"""A fast OpenAI-compatible upstream double on loopback, for benchmarks and reliability tests.

It answers chat completions with canned JSON or SSE streams after a configurable latency, fast
enough that it is never the bottleneck of a gateway benchmark while sharing a core with the
load generator. That rules out an ASGI framework: it is raw asyncio protocols (uvloop when
installed) with ``httptools`` parsing HTTP/1.1, and every request that needs no waiting is
answered from the data callback itself, without a task.

Endpoints:

``GET /health``, ``GET /v1/models``
    200, and the served model names.
``POST /v1/chat/completions``
    A ``chat.completion`` with usage, or with ``"stream": true`` SSE chunks, an optional usage
    chunk (``stream_options.include_usage``) and ``data: [DONE]``, chunked.
``POST /_faults``, ``DELETE /_faults``
    Queue fault specs (a JSON list, appended) or clear them. Each chat request takes the next
    spec, in arrival order; with none queued it gets the default behaviour. Keys, combinable:
    ``status`` (+ ``retry_after``, ``body``), ``hang``, ``reset``, ``latency_ms``, ``chunks``,
    ``chunk_gap_ms``, ``stream_reset_after``, ``stream_error_after``, ``stall_after``,
    ``raw_body`` (+ ``content_type``), ``barrier``. See :class:`Fault`.
``GET /_stats``, ``POST /_stats/reset``
    Counters of chat requests, and the client disconnects seen while a request was in flight
    (including while it waited in a latency, hang or stall).
``GET /_requests``
    The last 100 chat requests received: headers and JSON body.

Every model answers with the default profile (``--latency-ms``, ``--chunks``,
``--chunk-gap-ms``, ``--load-ms``) unless it has its own (``--profile
drip:chunks=40,chunk_gap_ms=50``; with ``chunks_from_max_tokens=1`` a stream has the request's
``max_tokens`` chunks), so one process can serve a fast model and a slowly streaming one side
by side. ``--load-ms`` makes a server that slows as its load grows, like an engine whose batch
grows: each other chat request in flight on the server when a request starts adds that much to
its latency.

Run it with ``python -m bench.upstream --port 0``; the first stdout line is its URL. Tests use
:class:`UpstreamDouble`, which runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import httptools
import orjson

HOST = "127.0.0.1"
DEFAULT_MODEL = "upstream-model"
KEEP_DISCONNECTS = 1000
KEEP_REQUESTS = 100

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}


# -- configuration and faults -------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How a model answers by default (a fault spec overrides it for one request)."""

    latency_ms: float = 0.0  # before the response headers
    chunks: int = 8  # SSE content chunks of a stream
    chunk_gap_ms: float = 0.0  # between two SSE chunks
    # A stream of the request's max_tokens chunks instead, as vLLM with ignore_eos: the client
    # chooses each stream's length (the concurrency benchmark does).
    chunks_from_max_tokens: bool = False
    # Each other request in flight on this server adds this to a request's latency: a replica
    # that slows as its batch grows, so a balancer that keeps sending it its share overloads
    # it (a fixed latency alone does not: least outstanding still picks it whenever idle).
    load_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> tuple[str, Profile]:
        """``NAME:key=value,...``, e.g. ``drip:chunks=40,chunk_gap_ms=50``."""
        name, sep, settings = text.rpartition(":")
        if not sep or not name:
            raise ValueError(f"'{text}' is not NAME:key=value,...")
        values: dict[str, float] = {}
        for item in settings.split(","):
            key, _, value = item.partition("=")
            if key not in {f.name for f in fields(cls)}:
                known = ", ".join(f.name for f in fields(cls))
                raise ValueError(f"'{key}' is not one of {known}")
            values[key] = float(value)
        default = cls()
        return name, cls(
            latency_ms=values.get("latency_ms", default.latency_ms),
            chunks=int(values.get("chunks", default.chunks)),
            chunk_gap_ms=values.get("chunk_gap_ms", default.chunk_gap_ms),
            chunks_from_max_tokens=bool(values.get("chunks_from_max_tokens", 0)),
            load_ms=values.get("load_ms", default.load_ms),
        )


@dataclass(frozen=True)
class UpstreamConfig:
    """What the double serves: models with the default profile, and models with their own."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    default: Profile = Profile()  # for ``models`` and for unknown names (unless strict)
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    text: str = "Hello from the upstream double."  # the non-streaming answer
    strict_models: bool = False  # 404 for a model not served, as vLLM does

    @property
    def served(self) -> list[str]:
        return [*self.models, *(m for m in self.profiles if m not in self.models)]

    def profile(self, model: object) -> Profile | None:
        """The model's profile; None for a model not served under ``strict_models``."""
        if isinstance(model, str) and model in self.profiles:
            return self.profiles[model]
        if self.strict_models and model not in self.models:
            return None
        return self.default


@dataclass(frozen=True)
class Fault:
    """What one chat request does instead of the default. Keys combine freely.

    For a non-streaming request the stream-only keys mean: ``stream_reset_after`` a reset,
    ``stall_after`` a hang, ``stream_error_after`` a 500 error.
    """

    status: int | None = None  # answer this status with an OpenAI error body
    retry_after: float | None = None  # with ``status``: a Retry-After header (seconds)
    body: dict[str, Any] | None = None  # with ``status``: this JSON body instead
    hang: bool = False  # read the request, never answer, keep the socket open
    reset: bool = False  # close the connection (RST) without answering
    latency_ms: float | None = None
    chunks: int | None = None
    chunk_gap_ms: float | None = None
    stream_reset_after: int | None = None  # N SSE events, then an abrupt close (RST)
    stream_error_after: int | None = None  # N events, an in-band error event, then [DONE]
    stall_after: int | None = None  # N events, then silence on an open connection
    # Answer ``status`` (200 by default) with these bytes as they are, for a stream request
    # too: a body that is not JSON, or JSON of the wrong shape, or a non-SSE 200 to a stream.
    raw_body: str | None = None
    content_type: str = "application/json"  # with ``raw_body``
    # Wait until this many requests with a barrier are waiting, then go on together: a fault
    # that hits N requests in flight at once, with no sleep to hope they overlap.
    barrier: int | None = None

    @classmethod
    def parse(cls, spec: object) -> Fault:
        if not isinstance(spec, dict):
            raise ValueError(f"a fault spec is a JSON object, not {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_FAULT_TYPES))
        if unknown:
            raise ValueError(f"unknown fault keys {unknown}; known: {sorted(_FAULT_TYPES)}")
        for key, value in spec.items():
            kinds = _FAULT_TYPES[key]
            # bool is an int to isinstance: a flag must not pass for a count, nor the reverse.
            if value is not None and (
                not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
            ):
                raise ValueError(f"fault key '{key}': {value!r} is not a {kinds[0].__name__}")
        return cls(**spec)


_FAULT_TYPES: dict[str, tuple[type, ...]] = {
    "status": (int,),
    "retry_after": (int, float),
    "body": (dict,),
    "hang": (bool,),
    "reset": (bool,),
    "latency_ms": (int, float),
    "chunks": (int,),
    "chunk_gap_ms": (int, float),
    "stream_reset_after": (int,),
    "stream_error_after": (int,),
    "stall_after": (int,),
    "raw_body": (str,),
    "content_type": (str,),
    "barrier": (int,),
}


_DEFAULT_FAULT = Fault()


# -- statistics ---------------------------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    completed: int = 0
    disconnected: int = 0
    faults_applied: int = 0
    disconnects: deque[dict[str, float | int]] = field(
        default_factory=lambda: deque(maxlen=KEEP_DISCONNECTS)
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "faults_applied": self.faults_applied,
            "disconnects": list(self.disconnects),
        }


class Upstream:
    """The shared state of one server: configuration, fault queue, counters, recent requests."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.faults: deque[Fault] = deque()
        self.stats = Stats()
        self.recent: deque[tuple[int, list[tuple[bytes, bytes]], bytes]] = deque(
            maxlen=KEEP_REQUESTS
        )
        self.created = int(time.time())
        self.barrier: list[asyncio.Future[None]] = []
        # Rendered SSE events per (model, chunks): a stream costs a few writes, not JSON work.
        self._streams: dict[tuple[str, int], list[bytes]] = {}
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": self.created, "owned_by": "bench"}
                    for m in config.served
                ],
            }
        )

    def models_body(self) -> bytes:
        return self._models_body

    def completion(self, model: str, n: int) -> bytes:
        return orjson.dumps(
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": self.created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.config.text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            }
        )

    def stream_events(self, model: str, chunks: int) -> list[bytes]:
        """``chunks`` SSE events (the first with the role, the last with finish_reason)."""
        key = (model, chunks)
        events = self._streams.get(key)
        if events is None:
            events = [_sse_chunk(model, self.created, i, chunks) for i in range(chunks)]
            if len(self._streams) < 64:
                self._streams[key] = events
        return events

    def usage_event(self, model: str, chunks: int) -> bytes:
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def next_fault(self) -> Fault:
        if not self.faults:
            return _DEFAULT_FAULT
        self.stats.faults_applied += 1
        return self.faults.popleft()


def _sse_chunk(model: str, created: int, index: int, total: int) -> bytes:
    delta: dict[str, str] = {"content": f"tok{index} "}
    if index == 0:
        delta["role"] = "assistant"
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": "stop" if index == total - 1 else None,
            }
        ],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


# -- HTTP ---------------------------------------------------------------------------------------


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response(
    status: int, body: bytes, extra: Sequence[tuple[str, str]] = (), keep_alive: bool = True
) -> bytes:
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers.extend(extra)
    if not keep_alive:
        headers.append(("connection", "close"))
    return _head(status, headers) + body


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "ServiceUnavailableError" if status >= 500 else "Error")
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _streams(request: _Request) -> bool:
    return request.chat is not None and request.chat.get("stream") is True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = _head(
    200,
    [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("transfer-encoding", "chunked"),
    ],
)
_LAST_CHUNK = b"0\r\n\r\n"
_DONE = _chunk(b"data: [DONE]\n\n")
_OK = _response(200, b'{"status":"ok"}')


@dataclass(eq=False)  # identity: a request is a key of its connection's in-flight set
class _Request:
    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    started: float  # perf_counter at the request's first byte
    n: int = 0  # a chat request's number (``requests`` counter) since the last stats reset
    chat: dict[str, Any] | None = None  # a chat request's JSON body
    profile: Profile | None = None  # a chat request's model's profile


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order (HTTP/1.1)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._started = 0.0
        # Requests waiting behind one that takes time (pipelining), and the task answering.
        self._queue: deque[tuple[_Request, Fault | None]] = deque()
        self._task: asyncio.Task[None] | None = None
        # Chat requests of this connection counted in ``stats.in_flight``.
        self._in_flight: set[_Request] = set()
        self._closed = False
        self._closed_by_us = False

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._abort()
        except httptools.HttpParserError:
            self._write(_response(400, _error_body(400, "malformed HTTP"), keep_alive=False))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._closed_by_us:
            now = time.perf_counter()
            stats = self.upstream.stats
            for request in self._in_flight:
                stats.disconnected += 1
                stats.in_flight -= 1
                elapsed = round(now - request.started, 6)
                stats.disconnects.append(
                    {"request": request.n, "elapsed_s": elapsed, "at": time.time()}
                )
        else:
            self.upstream.stats.in_flight -= len(self._in_flight)
        self._in_flight.clear()
        if self._task is not None:
            self._task.cancel()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = _Request(
            method=self.parser.get_method(),
            path=self._url.split(b"?", 1)[0],
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self.parser.should_keep_alive(),
            started=self._started,
        )
        fault: Fault | None = None
        if request.path == b"/v1/chat/completions" and request.method == b"POST":
            upstream = self.upstream
            upstream.stats.requests += 1
            upstream.stats.in_flight += 1
            request.n = upstream.stats.requests
            self._in_flight.add(request)
            upstream.recent.append((request.n, request.headers, request.body))
            request.chat = _json_object(request.body)
            if request.chat is not None:
                request.profile = upstream.config.profile(request.chat.get("model"))
            # Faults are taken in arrival order, even when this request waits behind another.
            fault = upstream.next_fault()
        # The fast path: nothing queued and nothing to wait for, so answer right here.
        if self._task is None and not self._queue and self._immediate(request, fault):
            self._answer_now(request, fault)
            return
        self._queue.append((request, fault))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    # -- answering ------------------------------------------------------------------------------

    @staticmethod
    def _immediate(request: _Request, fault: Fault | None) -> bool:
        if fault is None or request.profile is None:
            return True  # control endpoints; a bad body or unknown model is answered at once
        if request.profile.load_ms:
            return False  # its latency depends on the load: it is worked out in _chat
        if fault is not _DEFAULT_FAULT:
            return (
                fault.status is not None
                and not fault.latency_ms
                and not fault.hang
                and fault.raw_body is None
                and fault.barrier is None
            )
        return not request.profile.latency_ms and not _streams(request)

    async def _drain(self) -> None:
        try:
            while self._queue and not self._closed:
                request, fault = self._queue.popleft()
                if fault is None:
                    self._answer_now(request, None)
                else:
                    await self._chat(request, fault)
        finally:
            self._task = None

    def _answer_now(self, request: _Request, fault: Fault | None) -> None:
        """Answer a request that needs no waiting (control endpoints, instant chat answers)."""
        if fault is not None:
            parsed = self._parse_chat(request)
            if parsed is None:
                return
            if fault.status is not None:
                self._send_error(request, fault)
            else:
                self._send_completion(request, parsed[0])
            return
        path, method = request.path, request.method
        if path == b"/health":
            self._reply(request, _OK)
        elif path == b"/v1/models":
            self._reply(request, _response(200, self.upstream.models_body()))
        elif path == b"/_stats" and method == b"GET":
            self._reply(request, _response(200, orjson.dumps(self.upstream.stats.to_dict())))
        elif path == b"/_stats/reset" and method == b"POST":
            stats = self.upstream.stats
            # In-flight requests keep their count: they will still complete or disconnect.
            self.upstream.stats = Stats(in_flight=stats.in_flight)
            self._reply(request, _OK)
        elif path == b"/_faults":
            self._faults(request)
        elif path == b"/_requests" and method == b"GET":
            self._reply(request, _response(200, self._recent()))
        else:
            status = 405 if path == b"/v1/chat/completions" else 404
            message = f"{request.method.decode()} {path.decode('latin-1')} is not served"
            self._reply(request, _response(status, _error_body(status, message)))

    def _faults(self, request: _Request) -> None:
        upstream = self.upstream
        if request.method == b"DELETE":
            upstream.faults.clear()
        elif request.method == b"POST":
            try:
                specs = orjson.loads(request.body or b"[]")
                if not isinstance(specs, list):
                    specs = [specs]
                upstream.faults.extend(Fault.parse(spec) for spec in specs)
            except (ValueError, TypeError) as exc:
                self._reply(request, _response(400, _error_body(400, str(exc))))
                return
        elif request.method != b"GET":
            self._reply(request, _response(405, _error_body(405, "GET, POST or DELETE")))
            return
        self._reply(request, _response(200, orjson.dumps({"queued": len(upstream.faults)})))

    def _recent(self) -> bytes:
        items = []
        for n, headers, body in self.upstream.recent:
            try:
                parsed: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = body.decode("utf-8", "replace")
            items.append(
                {
                    "request": n,
                    "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
                    "body": parsed,
                }
            )
        return orjson.dumps(items)

    def _parse_chat(self, request: _Request) -> tuple[dict[str, Any], Profile] | None:
        """The chat body and its model's profile, or None after answering 400/404."""
        if request.chat is None:
            self._finish_chat(request, _error_body(400, "the body is not a JSON object"), 400)
            return None
        if request.profile is None:
            message = f"The model `{request.chat.get('model')}` does not exist."
            self._finish_chat(request, _error_body(404, message), 404)
            return None
        return request.chat, request.profile

    async def _chat(self, request: _Request, fault: Fault) -> None:
        parsed = self._parse_chat(request)
        if parsed is None:
            return
        body, profile = parsed
        stream = _streams(request)
        if fault.barrier is not None:
            await self._barrier(fault.barrier)
        latency = fault.latency_ms if fault.latency_ms is not None else profile.latency_ms
        if profile.load_ms:
            # Read after any barrier: the requests waiting there together are in flight too.
            others = max(0, self.upstream.stats.in_flight - 1)
            latency += profile.load_ms * others
        if latency:
            await asyncio.sleep(latency / 1000)
        if fault.raw_body is not None:
            extra = [("content-type", fault.content_type)]
            payload = fault.raw_body.encode()
            head = _head(fault.status or 200, [*extra, ("content-length", str(len(payload)))])
            self._write(head + payload)
            self._done(request)
            return
        if fault.reset or (fault.stream_reset_after is not None and not stream):
            self._abort()
            return
        if fault.hang or (fault.stall_after is not None and not stream):
            await asyncio.Future()  # until the client leaves (the task is cancelled)
        if fault.status is not None:
            self._send_error(request, fault)
        elif fault.stream_error_after is not None and not stream:
            self._finish_chat(request, _error_body(500, "injected error"), 500)
        elif stream:
            await self._stream(request, body, profile, fault)
        else:
            self._send_completion(request, body)

    async def _barrier(self, count: int) -> None:
        waiting = self.upstream.barrier
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(arrived)
        if len(waiting) >= count:
            for future in waiting:
                if not future.done():
                    future.set_result(None)
            waiting.clear()
        await arrived

    def _send_completion(self, request: _Request, body: dict[str, Any]) -> None:
        model = str(body.get("model") or self.upstream.config.models[0])
        payload = self.upstream.completion(model, request.n)
        self._finish_chat(request, payload, 200)

    def _send_error(self, request: _Request, fault: Fault) -> None:
        status = fault.status or 500
        payload = (
            orjson.dumps(fault.body)
            if fault.body is not None
            else _error_body(status, f"injected HTTP {status}")
        )
        extra = [("retry-after", f"{fault.retry_after:g}")] if fault.retry_after is not None else []
        self._finish_chat(request, payload, status, extra)

    async def _stream(
        self, request: _Request, body: dict[str, Any], profile: Profile, fault: Fault
    ) -> None:
        model = str(body.get("model") or self.upstream.config.models[0])
        chunks = profile.chunks
        if profile.chunks_from_max_tokens:
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            chunks = limit if isinstance(limit, int) and limit > 0 else chunks
        if fault.chunks is not None:
            chunks = fault.chunks
        gap = fault.chunk_gap_ms if fault.chunk_gap_ms is not None else profile.chunk_gap_ms
        events = self.upstream.stream_events(model, chunks)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events = [*events, self.upstream.usage_event(model, chunks)]
        cut = next(
            (
                (after, kind)
                for after, kind in (
                    (fault.stream_reset_after, "reset"),
                    (fault.stream_error_after, "error"),
                    (fault.stall_after, "stall"),
                )
                if after is not None
            ),
            None,
        )
        self._write(_STREAM_HEAD)
        for i, event in enumerate(events):
            if cut is not None and i == cut[0]:
                break
            if i and gap:
                await asyncio.sleep(gap / 1000)
            if self._closed:
                return
            self._write(_chunk(event))
        if cut is not None:
            kind = cut[1]
            if kind == "reset":
                self._abort()
                return
            if kind == "stall":
                await asyncio.Future()
            error = {"error": {"message": "injected stream error", "type": "InternalServerError"}}
            self._write(_chunk(b"data: " + orjson.dumps(error) + b"\n\n"))
        self._write(_DONE + _LAST_CHUNK)
        self._done(request)

    def _finish_chat(
        self,
        request: _Request,
        payload: bytes,
        status: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._write(_response(status, payload, extra, request.keep_alive))
        self._done(request)

    def _done(self, request: _Request) -> None:
        if request in self._in_flight:
            self._in_flight.discard(request)
            self.upstream.stats.in_flight -= 1
            self.upstream.stats.completed += 1
        if not request.keep_alive:
            self._close()

    def _reply(self, request: _Request, response: bytes) -> None:
        self._write(response)
        if not request.keep_alive:
            self._close()

    # -- transport ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed_by_us = True
            self.transport.close()

    def _abort(self) -> None:
        """Close with a TCP reset, the way a crashed server looks to its client."""
        if self.transport is None or self._closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._closed_by_us = True
        self.transport.abort()


# -- serving ------------------------------------------------------------------------------------


async def serve(
    config: UpstreamConfig, port: int = 0, host: str = HOST
) -> tuple[asyncio.Server, Upstream]:
    """Start serving on ``host:port`` (0: a free port) in the running loop."""
    upstream = Upstream(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(upstream), host, port, backlog=4096, reuse_address=True
    )
    return server, upstream


def _install_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Callable[[], Any]) -> Any:
    """``asyncio.run`` on uvloop when it is installed."""
    factory = _install_uvloop()
    if factory is None:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _write_port_file(path: Path, port: int) -> None:
    # Written whole then renamed, so a reader polling for it never sees half a line.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def _main(args: argparse.Namespace) -> None:
    config = UpstreamConfig(
        models=tuple(args.model or [DEFAULT_MODEL]),
        default=Profile(args.latency_ms, args.chunks, args.chunk_gap_ms, load_ms=args.load_ms),
        profiles=dict(Profile.parse(text) for text in args.profile or []),
        strict_models=args.strict_models,
    )
    server, _ = await serve(config, args.port, args.host)
    port = server.sockets[0].getsockname()[1]
    url = f"http://{args.host}:{port}"
    if args.port_file:
        _write_port_file(Path(args.port_file), port)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--port-file", help="also write the chosen port to this file")
    parser.add_argument("--model", action="append", help="a served model name (repeatable)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="before the headers")
    parser.add_argument("--chunks", type=int, default=8, help="SSE content chunks per stream")
    parser.add_argument("--chunk-gap-ms", type=float, default=0.0)
    parser.add_argument(
        "--load-ms",
        type=float,
        default=0.0,
        help="each other chat request in flight on this server adds this to a request's latency",
    )
    parser.add_argument(
        "--profile",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="another served model with its own latency_ms, chunks, chunk_gap_ms, load_ms, "
        "chunks_from_max_tokens=1 (repeatable)",
    )
    parser.add_argument("--strict-models", action="store_true", help="404 for other models")
    args = parser.parse_args(argv)
    run(lambda: _main(args))


# -- the test helper ----------------------------------------------------------------------------


class UpstreamDouble:
    """The double in a subprocess on a free loopback port, driven over HTTP.

    >>> with UpstreamDouble(latency_ms=5) as upstream:
    ...     upstream.faults([{"status": 503, "retry_after": 1}, {"hang": True}])
    ...     ...  # point a gateway at upstream.url
    ...     upstream.stats()["disconnected"]
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        chunks: int = 8,
        chunk_gap_ms: float = 0.0,
        load_ms: float = 0.0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        profiles: Mapping[str, Mapping[str, float]] | None = None,
        strict_models: bool = False,
        cpus: set[int] | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        self.args = ["--latency-ms", str(latency_ms), "--chunks", str(chunks)]
        self.args += ["--chunk-gap-ms", str(chunk_gap_ms)]
        if load_ms:
            self.args += ["--load-ms", str(load_ms)]
        for model in models:
            self.args += ["--model", model]
        for name, settings in (profiles or {}).items():
            values = ",".join(f"{k}={v}" for k, v in settings.items())
            self.args += ["--profile", f"{name}:{values}"]
        if strict_models:
            self.args.append("--strict-models")
        self.cpus = cpus
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> UpstreamDouble:
        import httpx  # only the helper needs it; the server must start fast and lean

        with tempfile.TemporaryDirectory(prefix="upstream-") as tmp:
            port_file = Path(tmp) / "port"
            cmd = [sys.executable, "-m", "bench.upstream", "--port", "0"]
            cmd += ["--port-file", str(port_file), *self.args]
            self.process = subprocess.Popen(
                cmd,
                cwd=Path(__file__).resolve().parent.parent,  # so ``-m bench.upstream`` imports
                stdout=subprocess.DEVNULL,
            )
            if self.cpus:
                os.sched_setaffinity(self.process.pid, self.cpus)
            deadline = time.monotonic() + self.startup_timeout_s
            while not port_file.exists():
                if self.process.poll() is not None:
                    raise RuntimeError(f"the upstream double exited with {self.process.returncode}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError("the upstream double did not start")
                time.sleep(0.01)
            self.port = int(port_file.read_text())
        self.url = f"http://{HOST}:{self.port}"
        self._client = httpx.Client(base_url=self.url, timeout=10.0)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> UpstreamDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def faults(self, specs: Sequence[dict[str, Any]]) -> int:
        """Queue fault specs (appended), one per chat request; returns how many are queued."""
        resp = self._call("POST", "/_faults", content=orjson.dumps(list(specs)))
        return int(resp["queued"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/_faults")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_stats"))

    def requests(self) -> list[dict[str, Any]]:
        """The last 100 chat requests: ``{"request", "headers", "body"}``."""
        return list(self._call("GET", "/_requests"))

    def reset(self) -> None:
        """Clear the fault queue and the counters."""
        self.clear_faults()
        self._call("POST", "/_stats/reset")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._client is None:
            raise RuntimeError("the upstream double is not started")
        resp = self._client.request(method, path, **kwargs)
        resp.raise_for_status()
        return orjson.loads(resp.content)


if __name__ == "__main__":
    main()
