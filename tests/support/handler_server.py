"""Serve a scripted handler on a loopback port, so engines are tested over real sockets.

A handler takes an ``httpx.Request`` and returns an ``httpx.Response`` (the shape httpx's
MockTransport uses, which keeps scripted upstreams short to write). The server turns each
real HTTP request into one and writes the response back: its status, headers and body, a
streamed body chunk by chunk, and a stream that raises midway as a connection cut after the
chunks before it. A handler that raises ``httpx.ConnectError`` resets the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

Handler = Callable[[httpx.Request], httpx.Response]

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection"}


def _app(handler: Handler) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        scripted_request = httpx.Request(
            request.method,
            str(request.url),
            headers=list(request.headers.items()),
            content=await request.read(),
        )
        try:
            scripted = handler(scripted_request)
        except httpx.ConnectError:
            assert request.transport is not None
            request.transport.abort()  # a reset, as a refused or dropped connection looks
            raise web.HTTPInternalServerError() from None
        headers = {k: v for k, v in scripted.headers.items() if k.lower() not in _HOP_BY_HOP}
        if isinstance(scripted.stream, httpx.AsyncByteStream) and not hasattr(scripted, "_content"):
            response = web.StreamResponse(status=scripted.status_code, headers=headers)
            await response.prepare(request)
            try:
                async for chunk in scripted.stream:
                    await response.write(chunk)
            except httpx.HTTPError:
                assert request.transport is not None
                request.transport.abort()  # the cut: no terminating chunk
                return response
            await response.write_eof()
            return response
        return web.Response(status=scripted.status_code, body=scripted.content, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """Run ``handler`` on 127.0.0.1 and a free port; yields the base URL."""
    runner = web.AppRunner(_app(handler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
