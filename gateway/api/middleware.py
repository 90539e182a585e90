"""ASGI middleware that must see raw bytes: the request body limit."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLargeError


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413, counting bytes as they arrive.

    Content-Length is checked up front; chunked bodies (no Content-Length) are counted while
    they are read, so a client cannot get past the limit by leaving the length out.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send)
                    return
                break
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counted, send)

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than this gateway's limit of {self.max_bytes} bytes."
        )

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(self._error().to_dict())
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
