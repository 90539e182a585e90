"""``POST /v1/chat/completions`` served straight from the ASGI scope.

FastAPI's routing, request wrapping and exception layers cost about 0.15 ms per request on
this gateway's machines, more than validating, routing and logging the request together
(docs/benchmarks.md). The route stays declared in FastAPI, for the OpenAPI schema; this
middleware answers it before FastAPI's router is reached, with the same handler and the same
error mapping.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.chat import create_chat_completion
from gateway.api.errors import error_response
from gateway.errors import GatewayError

PATH = "/v1/chat/completions"


class ChatHotPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        tracing = scope["app"].state.gateway.tracing
        if tracing.enabled:  # off: one flag, no span (gateway/telemetry/tracing.py)
            await tracing.serve(scope, receive, send, answer)
            return
        await answer(scope, receive, send)


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    """The chat request's whole answer: a JSON body, an error, or a stream to its end."""
    try:
        response = await create_chat_completion(Request(scope, receive))
    except GatewayError as exc:
        # Other exceptions reach Starlette's ServerErrorMiddleware and the app's handler.
        response = error_response(exc)
    await response(scope, receive, send)
