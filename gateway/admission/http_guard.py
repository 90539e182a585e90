"""The HTTP server's own guard: what uvicorn does not bound, bounded before the app runs.

uvicorn (with httptools, its fast parser) has no limit on the size of a request's headers, no
timeout for reading them or the body (``timeout_keep_alive`` only covers the idle time between
requests, and any byte resets it), and ``limit_concurrency`` answers 503 to health checks as
well as to everyone else. uvicorn's issue #157 lists these as not done. So ``gateway serve``
runs a subclass of uvicorn's httptools protocol that adds, per connection:

- a limit on the header block (431, counted on the bytes as they arrive, so a 16 MB header is
  refused after its first ``max_header_bytes``, not buffered whole);
- a timeout from a connection's (or a keep-alive request's) first byte to its last header, and
  a backstop on reading the body (the app itself answers 408 first: ``api/middleware.py``);
- a cap on open connections below the process's descriptor limit: past it the oldest
  connection that is idle or still sending its headers is closed for the newcomer, and when
  all are busy a few more are kept for ``GET /health`` and ``/ready`` only, so a flood of
  half-sent requests leaves the probes and the engine connections their descriptors;
- the ``Host`` check (DNS rebinding) and the ``Origin`` check (a web page's cross-site POST).

Refusals are OpenAI's error JSON and close the connection; none of them reaches the app, so
none is an inference event (the app logs every request that reaches it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from asyncio import TimerHandle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config.schema import ServerSpec
from gateway.errors import ConnectionRefusedByGuard, render

log = logging.getLogger(__name__)

#: descriptors kept for everything that is not a client connection: the event database and
#: spool, log files, imported modules' files, pipes to vLLM
BASE_DESCRIPTORS = 64
#: connections beyond ``max_connections`` that may only ask for these paths
PROBE_PATHS = frozenset({"/health", "/ready"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    408: b"Request Timeout",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass
class HttpGuard:
    """The server's limits, resolved once at start (``from_spec``)."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    probe_connections: int
    #: lower-case host names (no port) a request's Host may name; empty: any
    allowed_hosts: frozenset[str]
    #: exact origins (scheme://host[:port]) allowed to make state-changing requests
    cors_origins: frozenset[str]
    refused: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: ServerSpec, bind_host: str, descriptors: int) -> HttpGuard:
        hosts = {*LOOPBACK_NAMES, *(h.lower() for h in spec.allowed_hosts)}
        if not _wildcard(bind_host):
            hosts.add(bind_host.lower().strip("[]"))
        any_host = "*" in spec.allowed_hosts
        max_connections = spec.max_connections or default_max_connections(
            descriptors, spec.probe_connections
        )
        return cls(
            max_header_bytes=spec.max_header_bytes,
            header_timeout_s=spec.header_timeout_s,
            body_timeout_s=spec.body_timeout_s,
            max_connections=max_connections,
            probe_connections=spec.probe_connections,
            allowed_hosts=frozenset() if any_host else frozenset(hosts),
            cors_origins=frozenset(o.rstrip("/").lower() for o in spec.cors_origins),
        )

    def count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def host_allowed(self, host: bytes | None) -> bool:
        if not self.allowed_hosts:
            return True
        if host is None:
            return False
        return _host_name(host.decode("latin-1")) in self.allowed_hosts

    def origin_allowed(self, origin: bytes) -> bool:
        text = origin.decode("latin-1").rstrip("/").lower()
        if text in self.cors_origins:
            return True
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("http", "https"):
            return False  # "null" (a sandboxed page, a file) and anything odd
        # Same site: the page was served under a name this gateway answers to.
        return bool(self.allowed_hosts) and _host_name(rest) in self.allowed_hosts


def default_max_connections(descriptors: int, probes: int) -> int:
    """Client connections that leave room: each chat request may hold an engine connection
    too, so half of what is left after the process's own files and the probes' reserve."""
    return max(8, (descriptors - BASE_DESCRIPTORS - probes) // 2)


def raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one (allowed without privileges); the
    limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def guarded_protocol(guard: HttpGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``guard``'s limits (pass it as ``uvicorn.run(http=)``)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    guard: ClassVar[HttpGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: TimerHandle | None = None
        # Bytes since the current request began, until its headers are complete; None while
        # its body is read or its answer runs.
        self._header_bytes: int | None = 0
        self._probe_only = False
        self._refusal: tuple[int, str, str] | None = None
        self._since = 0.0  # when it connected, or its current request began

    # -- connections ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        self._since = self.loop.time()
        open_now = len(self.connections)
        if open_now > guard.max_connections and not self._evict_one():
            if open_now > guard.max_connections + guard.probe_connections:
                guard.count("connections")
                transport.abort()
                return
            self._probe_only = True
        # A silent connection is one that never finishes its headers.
        self._arm(guard.header_timeout_s, self._header_timeout)

    def _evict_one(self) -> bool:
        """Close the oldest connection that is idle or still sending its headers, so that a
        newcomer (a health check, say) is not the one refused; False when all are busy."""
        oldest: GuardedHttpToolsProtocol | None = None
        for other in self.connections:
            if (
                other is not self
                and isinstance(other, GuardedHttpToolsProtocol)
                and other._header_bytes is not None
                and not other.transport.is_closing()
                and (oldest is None or other._since < oldest._since)
            ):
                oldest = other
        if oldest is None:
            return False
        self.guard.count("evicted")
        oldest.transport.abort()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            refusal = self._refusal or (
                400,
                "invalid_request_error",
                "The request is not valid HTTP/1.1.",
            )
            self._refuse(*refusal)
            return
        # Headers still incomplete past the limit: refuse now, not after buffering them whole.
        if self._header_bytes is not None and self._header_bytes > self.guard.max_header_bytes:
            self._refuse(*self._too_large())

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # Each request's headers get header_timeout_s from its first byte (a keep-alive
        # connection's idle time before it is uvicorn's timeout_keep_alive).
        self._since = self.loop.time()
        self._arm(self.guard.header_timeout_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        guard = self.guard
        self._header_bytes = None
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > guard.max_header_bytes:
            self._stop(*self._too_large())
        host = origin = None
        for name, value in self.headers:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        if not guard.host_allowed(host):
            guard.count("host")
            self._stop(
                421,
                "host_not_allowed",
                "This gateway does not serve that Host; its names are set by server.allowed_hosts.",
            )
        method = self.parser.get_method().decode("ascii", "replace")
        if origin is not None and method in _STATE_CHANGING and not guard.origin_allowed(origin):
            guard.count("origin")
            self._stop(
                403,
                "cross_origin_refused",
                "Cross-origin requests that change state are refused; allow an origin with "
                "server.cors_origins.",
            )
        super().on_headers_complete()
        if self._probe_only and (method != "GET" or self.scope.get("path") not in PROBE_PATHS):
            guard.count("connections")
            self._stop(503, "gateway_overloaded", "The gateway has too many open connections.")
        # Reading the body: the app answers 408 at body_timeout_s; this closes a connection
        # whose body nobody reads (a route that ignores it) a little later.
        self._arm(guard.body_timeout_s + 5, self._body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until its next request: a connection that may be closed for a newcomer.
        if self._header_bytes is None:
            self._header_bytes = 0
            self._since = self.loop.time()

    # -- refusals -------------------------------------------------------------------------------

    def _too_large(self) -> tuple[int, str, str]:
        self.guard.count("header_size")
        return (
            431,
            "request_header_fields_too_large",
            f"The request's headers are over this gateway's limit of "
            f"{self.guard.max_header_bytes} bytes.",
        )

    def _stop(self, status: int, code: str, message: str) -> None:
        """Refuse from inside a parser callback: parsing stops, ``data_received`` answers."""
        self._refusal = (status, code, message)
        # Raised inside a parser callback it stops parsing; ``data_received`` answers it.
        raise ConnectionRefusedByGuard(status, code, message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._disarm()
        self._header_bytes = None
        if self.transport.is_closing():
            return
        body = orjson.dumps(render(ConnectionRefusedByGuard(status, code, message)))
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        head += b"connection: close\r\n\r\n"
        self.transport.write(head + body)
        self.transport.close()

    def _header_timeout(self) -> None:
        self._timer = None
        self.guard.count("header_timeout")
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (its headers were complete)
        self._refuse(408, "request_timeout", "The request's headers took too long.")

    def _body_timeout(self) -> None:
        self._timer = None
        self.guard.count("body_timeout")
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` without the port, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, _ = host.partition(":")
    return name


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")
