"""Answering a chat completion: watching for the client to leave, and the event stream.

One disconnect watcher per request serves both phases: while the dispatcher works (before the
first byte) and while a stream is sent. When the client leaves, the watcher cancels the
request's task, and the cancellation closes the upstream call (so vLLM stops generating).

``EventStream`` replaces Starlette's StreamingResponse on the hot path: it needs no task group
of its own (the watcher is already running), which took about 0.1 ms off time to first token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.routing.relay import is_drain_cancel, shutting_down, uncancel

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]"


class DisconnectWatch:
    """Cancels the current task when the client disconnects (the body must be read already:
    the next ASGI message can then only be the disconnect)."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None, "a watch runs inside a request's task"
        self._task = task
        self.gone = False
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._task.cancel()

    def absorbs(self) -> bool:
        """After a CancelledError: whether it came from the disconnect (and is now spent)."""
        return self.gone and self._task.uncancel() == 0

    def stop(self) -> None:
        self._watcher.cancel()


class EventStream(Response):
    """Server-sent events passed through as they come; the watch and ``on_close`` end with it.

    A ``Response`` by type only (as Starlette's StreamingResponse): it sends itself.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: Mapping[str, str],
        watch: DisconnectWatch,
        on_close: Callable[[], None],
        *,
        committed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.chunks = chunks
        self.sse_headers = _SSE_HEADERS + [(k.encode(), v.encode()) for k, v in headers.items()]
        self.watch = watch
        self.on_close = on_close
        #: durable mode: awaited before ``[DONE]`` and the end of the body are sent
        self.committed = committed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.sse_headers})
            held = b""
            async for chunk in self.chunks:
                if self.committed is not None:
                    # Hold back [DONE] (or what may be its start): the client must not have
                    # the whole answer before its event is committed.
                    chunk, held = hold_done(held + chunk)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.committed is not None:
                await self.committed()  # the relay has recorded the event by now
            await send({"type": "http.response.body", "body": held, "more_body": False})
        except asyncio.CancelledError as exc:
            if self.watch.absorbs():
                pass  # the client left: the relay below is closed, ending the upstream call
            elif is_drain_cancel(exc):
                # The drain ran out while we were sending: the relay logs the attempt as the
                # gateway's doing and hands back its error event, sent if the client reads.
                uncancel()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        last = await self.chunks.athrow(shutting_down())  # type: ignore[attr-defined]
                        await send({"type": "http.response.body", "body": last})
            else:
                raise
        finally:
            self.watch.stop()
            await self.chunks.aclose()  # type: ignore[attr-defined]
            self.on_close()


def hold_done(data: bytes) -> tuple[bytes, bytes]:
    """``data`` split into what may be sent now and what is held: from ``data: [DONE]`` on,
    or a tail that may be its first bytes (the rest may come in the next chunk)."""
    at = data.find(_DONE)
    if at >= 0:
        return data[:at], data[at:]
    for size in range(min(len(_DONE) - 1, len(data)), 0, -1):
        if data.endswith(_DONE[:size]):
            return data[:-size], data[-size:]
    return data, b""
