"""Reading a request body within bounds: its type, its size and its time.

The chat endpoint reads its body with ``read_body`` itself, so each refusal (413, 408, 415, a
client leaving mid-body) is one inference event. ``RequestGuard`` applies the same bounds to
every other route, as ASGI middleware that sees the raw bytes.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    ClientClosedRequest,
    GatewayError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)


def too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than this gateway's limit of {max_bytes} bytes."
    )


def is_json(content_type: bytes | None) -> bool:
    """``application/json`` or ``application/<x>+json``, with or without parameters."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def check_body_headers(headers: list[tuple[bytes, bytes]], max_bytes: int) -> bool:
    """Refuse a body that is not JSON or declared too large; whether a body is coming."""
    content_type = length = None
    chunked = False
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None:
        if not length.isdigit() or int(length) > max_bytes:
            raise too_large(max_bytes)
        if length == b"0" and not chunked:
            return False
    elif not chunked:
        return False
    # Browsers send text/plain and form bodies cross-site without asking first; JSON they
    # must ask for (a CORS preflight), which this gateway answers only when configured.
    if not is_json(content_type):
        raise UnsupportedMediaTypeError()
    return True


async def read_body(receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most ``max_bytes``, within ``timeout_s``; 413, 408 or 499 else."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientClosedRequest()
                body = message.get("body", b"")
                size += len(body)
                if size > max_bytes:
                    raise too_large(max_bytes)
                chunks.append(body)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {timeout_s:g} s."
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RequestGuard:
    """The body bounds for every route but ``skip`` (which reads its body with ``read_body``).

    Content-Length is checked up front; chunked bodies are counted while they are read, so a
    client cannot get past the limit by leaving the length out. A client that leaves mid-body
    is a ``ClientClosedRequest``, not a traceback.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0, skip: str = ""
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == self.skip:
            await self.app(scope, receive, send)
            return
        try:
            expects_body = check_body_headers(scope["headers"], self.max_bytes)
        except GatewayError as exc:
            await self._refuse(send, exc)
            return
        if not expects_body:
            await self.app(scope, receive, send)
            return
        received = 0
        complete = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s

        async def bounded() -> Message:
            nonlocal received, complete
            if complete:  # after the body: only the disconnect, however late
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"The request body did not arrive within {self.body_timeout_s:g} s."
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientClosedRequest()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large(self.max_bytes)
            complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)

    async def _refuse(self, send: Send, error: GatewayError) -> None:
        body = orjson.dumps(error.to_dict())
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


#: the former name, for code that built the app with it
BodySizeLimit = RequestGuard
