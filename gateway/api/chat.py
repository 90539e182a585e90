"""POST /v1/chat/completions: admission (key, limits, rates, concurrency), then the dispatcher."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.admission.limits import Admission, check_limits, estimate_tokens, validate_request
from gateway.api.access import BEARER, authenticate_header
from gateway.api.bodies import json_body, parse_json_object
from gateway.api.middleware import check_body_headers, read_body
from gateway.api.streaming import DisconnectWatch, EventStream
from gateway.errors import ClientClosedRequest, GatewayError
from gateway.protocol import ChatCompletionRequest, ErrorResponse
from gateway.state import GatewayState
from gateway.telemetry import tracing

router = APIRouter()

INFERENCE_ID = "x-switchboard-inference-id"

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat.completion object; with `stream: true`, server-sent "
        "chat.completion.chunk events ending in `data: [DONE]`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            # OpenAPI 3.1: the schema of one server-sent event.
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}},
                }
            },
        },
    },
    **{
        code: {"model": ErrorResponse}
        for code in (400, 401, 403, 404, 408, 413, 415, 429, 502, 503, 504)
    },
}


@router.post(
    "/v1/chat/completions",
    responses=_RESPONSES,
    # The key is checked in the handler (so refusals are logged); this documents the header.
    openapi_extra={**json_body(ChatCompletionRequest), "security": [{BEARER: []}]},
)
async def create_chat_completion(request: Request) -> Response:
    # No FastAPI dependencies on the hot path: resolving them costs more than the work.
    state: GatewayState = request.app.state.gateway
    started = time.perf_counter()
    dispatcher = state.dispatcher
    model: str | None = None
    admission: Admission | None = None
    limits = state.config.limits
    server = state.config.server
    client = request.client.host if request.client else "unknown"
    dispatched = False
    try:
        # Refused before the key is even looked at: a web page's text POST, a declared size
        # over the limit.
        check_body_headers(request.scope["headers"], limits.max_body_bytes)
        key = authenticate_header(state, request.headers.get("authorization"), client, "inference")
        # The body is read (bounded in size and time) before anything is held: a client that
        # trickles its body holds no concurrency slot and no rate.
        raw = await read_body(request.receive, limits.max_body_bytes, server.body_timeout_s)
        body = parse_json_object(raw)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        chat = validate_request(body)
        check_limits(chat, limits)
        admission = Admission(
            limiter=state.limiter, gate=state.gate, limits=limits, key=key, client=client
        )
        # The key's own rates first, then a global slot: one key over its rate cannot take
        # slots from the rest.
        await admission.reserve(estimate_tokens(chat))
        admission.enter()
        tracing.step("gateway.admission", started)  # a no-op unless traced
        ctx = dispatcher.new_context()
        admission.ctx = ctx
        watching = DisconnectWatch(request.receive)
        watch: DisconnectWatch | None = watching
        dispatched = True
        try:
            if chat.stream:
                # The dispatcher pulls the first chunk before we answer, so a failure before
                # the first byte is still an HTTP error with its status, not a 200 with an
                # error inside.
                stream, headers = await dispatcher.stream(chat, body, request.headers, ctx)
                # Durable mode: the stream's [DONE] waits until its event is committed.
                committed = state.events.waiter(headers[INFERENCE_ID])
                response = EventStream(
                    stream, headers, watching, admission.release, committed=committed
                )
                watch = admission = None  # the stream ends them
                return response
            result, headers = await dispatcher.complete(chat, body, request.headers, ctx)
            if state.events.durable:  # the event is committed before the answer is sent
                await state.events.committed(headers[INFERENCE_ID])
        except asyncio.CancelledError:
            if watch is None or not watch.absorbs():
                raise
            raise ClientClosedRequest() from None
        finally:
            if watch is not None:
                watch.stop()
    except GatewayError as exc:
        if dispatched and isinstance(exc, ClientClosedRequest):
            raise  # the attempt was logged as cancelled; nobody is left to answer
        if INFERENCE_ID not in exc.headers:
            # Refused before any variant ran: logged too, every request is.
            exc.headers[INFERENCE_ID] = dispatcher.record_rejection(model, exc, started)
        if state.events.durable:  # an error's event too, before the error is sent
            await state.events.committed(exc.headers[INFERENCE_ID])
        raise
    finally:
        if admission is not None:
            admission.release()
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)
