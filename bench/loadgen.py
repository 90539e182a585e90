"""HTTP load for the gateway benchmarks: constant-arrival, one-at-a-time, and SSE streams.

The constant-arrival mode is open-loop: request ``i`` is due at ``t0 + i / rate`` whether or
not earlier ones have answered, and its latency is measured from that due time. A slow server
therefore shows up as latency (and as requests that wait for a free connection), never as a
quietly lower request rate: there is no coordinated omission. A closed-loop tool such as wrk
would wait for an answer before sending again and so hide exactly the tail that matters.

Everything runs on asyncio protocols with ``httptools``: per request it is one prebuilt
``write`` and a few parser callbacks, no coroutine and no task. That keeps one core of client
well above the rates the gateways reach. Timers have millisecond granularity (libuv), so a
request leaves up to about 1 ms after its due time; that offset is the same for every target
and cancels out of the figures reported as "added" (target minus direct).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

# Below this much before its due time a request goes now: waiting would only spin the loop.
_EARLY_S = 0.0001


@dataclass(frozen=True)
class Endpoint:
    """Where to send, and the request to send there (prebuilt once)."""

    host: str
    port: int
    request: bytes

    @classmethod
    def chat(
        cls,
        base_url: str,
        body: Mapping[str, Any],
        *,
        path: str = "/v1/chat/completions",
        headers: Mapping[str, str] | None = None,
    ) -> Endpoint:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"'{base_url}' is not an http:// URL")
        port = url.port or 80
        payload = orjson.dumps(dict(body))
        lines = [
            f"POST {url.path.rstrip('/')}{path} HTTP/1.1",
            f"host: {url.hostname}:{port}",
            "content-type: application/json",
            f"content-length: {len(payload)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls(url.hostname, port, head + payload)


@dataclass(eq=False)
class Exchange:
    """One request: when it was due, sent and answered, and the SSE events it received."""

    due: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    error: str | None = None
    stream: bool = False
    events: list[float] = field(default_factory=list)  # arrival time of each SSE event
    on_done: Callable[[Exchange], None] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    def finish(self, error: str | None = None) -> None:
        if self.done:
            return
        self.done = time.perf_counter()
        self.error = error
        if self.on_done is not None:
            self.on_done(self)


class _Connection(asyncio.Protocol):
    """One keep-alive client connection carrying one exchange at a time."""

    def __init__(
        self,
        on_idle: Callable[[_Connection], None] = lambda _: None,
        on_closed: Callable[[_Connection], None] = lambda _: None,
    ) -> None:
        self._on_idle = on_idle
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current: Exchange | None = None
        self.closed = False
        self._tail = b""  # the last byte of the previous body piece, for split "\n\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, exchange: Exchange, request: bytes) -> None:
        assert self.transport is not None and self.current is None
        self.current = exchange
        self._tail = b""
        exchange.sent = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")

    def on_headers_complete(self) -> None:
        if self.current is not None:
            self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        if exchange is None or not exchange.stream:
            return
        # An SSE event ends with a blank line; count the ends that arrived in this piece.
        now = time.perf_counter()
        ends = body.count(b"\n\n") + (self._tail == b"\n" and body[:1] == b"\n")
        exchange.events.extend([now] * ends)
        self._tail = body[-1:]

    def on_message_complete(self) -> None:
        exchange, self.current = self.current, None
        keep_alive = self.parser.should_keep_alive()
        if exchange is not None:
            exchange.finish()
        if keep_alive:
            self._on_idle(self)
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed" if exc is None else f"{type(exc).__name__}: {exc}")
        self._on_closed(self)

    def _fail(self, reason: str) -> None:
        exchange, self.current = self.current, None
        if exchange is not None:
            exchange.finish(reason)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Pool:
    """Keep-alive connections to one endpoint: idle ones are reused, more are opened (up to
    ``max_connections``) when every one is busy, and requests beyond that wait in order."""

    def __init__(self, endpoint: Endpoint, max_connections: int = 1024) -> None:
        self.endpoint = endpoint
        self.max_connections = max_connections
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.waiting: deque[Exchange] = deque()
        self.opening = 0
        self.opened = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    def submit(self, exchange: Exchange) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self._send(conn, exchange)
                return
        self.waiting.append(exchange)
        if self.size < self.max_connections and self.opening < len(self.waiting):
            self._open()

    def _send(self, conn: _Connection, exchange: Exchange) -> None:
        self.busy.add(conn)
        conn.send(exchange, self.endpoint.request)

    def _open(self) -> None:
        self.opening += 1
        loop = asyncio.get_running_loop()
        coro = loop.create_connection(
            lambda: _Connection(self._idle, self._closed), self.endpoint.host, self.endpoint.port
        )
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.opening -= 1
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Nobody to connect to: the oldest waiting request fails rather than waits forever.
            if self.waiting:
                self.waiting.popleft().finish(f"connect: {type(exc).__name__}: {exc}")
            return
        self.opened += 1
        _, conn = task.result()
        self._idle(conn)

    def _idle(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        if self.waiting:
            self._send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _closed(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.size < self.max_connections:
            self._open()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in [*self.idle, *self.busy]:
            conn.close()
        for exchange in self.waiting:
            exchange.finish("not sent")
        self.waiting.clear()
        self.idle.clear()
        self.busy.clear()


# -- results ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class RunResult:
    """A constant-arrival run. Latencies in seconds, from each request's due time."""

    rate: float
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    latencies: list[float]  # of the successful requests
    elapsed_s: float  # first due time to last answer
    connections: int
    ttfts: list[float] = field(default_factory=list)  # streams: due time to first event
    gaps: list[float] = field(default_factory=list)  # streams: between consecutive events
    max_gaps: list[float] = field(default_factory=list)  # streams: each one's longest gap
    event_counts: list[int] = field(default_factory=list)  # streams: events each one received

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def _summarise(
    rate: float, duration_s: float, t0: float, exchanges: list[Exchange], connections: int
) -> RunResult:
    errors: dict[str, int] = {}
    latencies: list[float] = []
    ttfts: list[float] = []
    gaps: list[float] = []
    max_gaps: list[float] = []
    event_counts: list[int] = []
    last = t0
    for ex in exchanges:
        if not ex.done:
            ex.finish("timeout")
        if not ex.ok:
            key = ex.error or f"HTTP {ex.status}"
            key = key if len(key) < 60 else key[:57] + "..."
            errors[key] = errors.get(key, 0) + 1
            continue
        last = max(last, ex.done)
        # From the due time, or from the send when the timer fired a hair early.
        start = min(ex.due, ex.sent)
        latencies.append(ex.done - start)
        if ex.stream:
            event_counts.append(len(ex.events))
        if ex.stream and ex.events:
            ttfts.append(ex.events[0] - start)
            stream_gaps = [b - a for a, b in zip(ex.events, ex.events[1:], strict=False)]
            gaps.extend(stream_gaps)
            max_gaps.append(max(stream_gaps, default=0.0))
    return RunResult(
        rate=rate,
        duration_s=duration_s,
        sent=sum(1 for ex in exchanges if ex.sent),
        ok=len(latencies),
        errors=errors,
        latencies=latencies,
        elapsed_s=last - t0,
        connections=connections,
        ttfts=ttfts,
        gaps=gaps,
        max_gaps=max_gaps,
        event_counts=event_counts,
    )


# -- the three modes ----------------------------------------------------------------------------


async def constant_rate(
    endpoint: Endpoint,
    rate: float,
    duration_s: float,
    *,
    stream: bool = False,
    max_connections: int = 1024,
    drain_s: float = 10.0,
    on_tick: Callable[[], None] | None = None,
) -> RunResult:
    """Send ``rate * duration_s`` requests at fixed intervals, open-loop.

    Requests still unanswered ``drain_s`` after the last one was due count as timeouts, and
    their connections are closed. ``on_tick`` is called about every 100 ms while sending
    (e.g. to sample a server's memory).
    """
    loop = asyncio.get_running_loop()
    pool = Pool(endpoint, max_connections)
    total = max(1, round(rate * duration_s))
    interval = 1.0 / rate
    exchanges: list[Exchange] = []
    remaining = total
    all_done = loop.create_future()

    def finished(_: Exchange) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)

    t0 = time.perf_counter() + 0.05  # a moment to set up before the first due time
    next_tick = t0

    def tick() -> None:
        nonlocal next_tick
        now = time.perf_counter()
        i = len(exchanges)
        while i < total and t0 + i * interval <= now + _EARLY_S:
            exchange = Exchange(due=t0 + i * interval, stream=stream, on_done=finished)
            exchanges.append(exchange)
            pool.submit(exchange)
            i += 1
        if on_tick is not None and now >= next_tick:
            next_tick = now + 0.1
            on_tick()
        if i < total:
            loop.call_later(max(0.0, t0 + i * interval - time.perf_counter()), tick)

    loop.call_later(0.05, tick)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(all_done), duration_s + 0.05 + drain_s)
    connections = pool.opened
    pool.close()  # requests still waiting for a connection finish as "not sent"
    # Requests never created (the sender fell behind the deadline) are not sent either.
    for i in range(len(exchanges), total):
        missed = Exchange(due=t0 + i * interval)
        missed.finish("not sent")
        exchanges.append(missed)
    return _summarise(rate, duration_s, t0, exchanges, connections)


class Sequential:
    """One keep-alive connection, one request at a time, timed from its send.

    For the added-latency rounds: several of these (one per target) take turns.
    """

    def __init__(self, endpoint: Endpoint, *, stream: bool = False) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self._conn: _Connection | None = None

    async def _connect(self) -> _Connection:
        if self._conn is None or self._conn.closed:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                _Connection,
                self.endpoint.host,
                self.endpoint.port,
            )
            self._conn = conn
        return self._conn

    async def one(self, timeout_s: float = 10.0) -> Exchange:
        conn = await self._connect()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def done(_: Exchange) -> None:
            if not waiter.done():
                waiter.set_result(None)

        exchange = Exchange(due=0.0, stream=self.stream, on_done=done)
        conn.send(exchange, self.endpoint.request)
        exchange.due = exchange.sent
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            conn.close()
            self._conn = None  # the next request gets a fresh connection
            exchange.finish("timeout")
        return exchange

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def streams_at_once(
    endpoint: Endpoint, count: int, *, ramp_s: float = 0.5, drain_s: float = 30.0
) -> RunResult:
    """``count`` concurrent streams, started evenly over ``ramp_s`` (each on its own
    connection), so that all of them are open at once for most of their length."""
    return await constant_rate(
        endpoint,
        count / ramp_s,
        ramp_s,
        stream=True,
        max_connections=count,
        drain_s=drain_s,
    )
