"""POST /v1/chat/completions: admission (key, limits, rates, concurrency), then the dispatcher."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from gateway.admission.keys import ApiKey
from gateway.admission.ratelimit import DEFAULT_OUTPUT_RESERVE, Quota
from gateway.api.access import BEARER
from gateway.api.bodies import invalid_from_validation, json_body, parse_json_object
from gateway.api.deps import GatewayState, require_dispatcher
from gateway.api.streaming import DisconnectWatch, EventStream
from gateway.config.schema import LimitsSpec
from gateway.errors import ClientClosedRequest, GatewayError, InvalidRequestError
from gateway.protocol import ChatCompletionRequest, ErrorResponse
from gateway.routing.dispatch import RequestContext

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
    **{code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 429, 502, 503, 504)},
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
    dispatcher = require_dispatcher(state)
    model: str | None = None
    admission: Admission | None = None
    try:
        key = state.keyring.authenticate(request.headers.get("authorization"), "inference")
        # Overload is refused before the body is even read: cheap, and it never queues.
        state.gate.enter()
        admission = Admission(state, key, request)
        body = parse_json_object(await request.body())
        model = body.get("model") if isinstance(body.get("model"), str) else None
        chat = validate_request(body)
        check_limits(chat, state.config.limits)
        admission.reserve(estimate_tokens(chat))
        ctx = dispatcher.new_context()
        admission.ctx = ctx
        watching = DisconnectWatch(request.receive)
        watch: DisconnectWatch | None = watching
        try:
            if chat.stream:
                # The dispatcher pulls the first chunk before we answer, so a failure before
                # the first byte is still an HTTP error with its status, not a 200 with an
                # error inside.
                stream, headers = await dispatcher.stream(chat, body, request.headers, ctx)
                response = EventStream(stream, headers, watching, admission.release)
                watch = admission = None  # the stream ends them
                return response
            result, headers = await dispatcher.complete(chat, body, request.headers, ctx)
        except asyncio.CancelledError:
            if watch is None or not watch.absorbs():
                raise
            raise ClientClosedRequest() from None
        finally:
            if watch is not None:
                watch.stop()
    except ClientClosedRequest:
        raise  # the attempt was logged as cancelled; nobody is left to answer
    except GatewayError as exc:
        if INFERENCE_ID not in exc.headers:
            # Refused before any variant ran: logged too, every request is.
            exc.headers[INFERENCE_ID] = dispatcher.record_rejection(model, exc, started)
        raise
    finally:
        if admission is not None:
            admission.release()
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


class Admission:
    """What a request holds while it runs: a concurrency slot and its token reservation."""

    def __init__(self, state: GatewayState, key: ApiKey | None, request: Request) -> None:
        self.state = state
        limits = state.config.limits
        self.quota = (key.quota if key else None) or Quota(
            limits.requests_per_minute, limits.tokens_per_minute
        )
        # Without keys the client's address is the key, so one client cannot starve the rest.
        client = request.client.host if request.client else "unknown"
        self.key = key.name if key else f"address:{client}"
        self.reserved = 0
        self.ctx: RequestContext | None = None
        self._released = False

    def reserve(self, tokens: int) -> None:
        self.reserved = self.state.limiter.admit(self.key, self.quota, tokens)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.state.gate.leave()
        if self.reserved and self.ctx is not None:
            self.state.limiter.settle(self.key, self.reserved, self.ctx.tokens)


def validate_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def check_limits(chat: ChatCompletionRequest, limits: LimitsSpec) -> None:
    if chat.n is not None and chat.n > limits.max_n:
        raise InvalidRequestError(
            f"'n' is {chat.n}; this gateway allows at most {limits.max_n}.", param="n"
        )
    limit = chat.output_limit
    if limit is not None and limit > limits.max_tokens:
        param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"'{param}' is {limit}; this gateway allows at most {limits.max_tokens}.",
            param=param,
        )
    if len(chat.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(chat.messages)} entries; this gateway allows at most "
            f"{limits.max_messages}.",
            param="messages",
        )
    chars = prompt_chars(chat)
    if chars > limits.max_chars:
        raise InvalidRequestError(
            f"The messages hold {chars} characters; this gateway allows at most "
            f"{limits.max_chars}.",
            param="messages",
        )


def prompt_chars(chat: ChatCompletionRequest) -> int:
    """Characters of text in all messages (images and other parts are bounded by the body)."""
    total = 0
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content is not None:
            total += sum(len(t) for p in content if isinstance(t := getattr(p, "text", None), str))
    return total


def estimate_tokens(chat: ChatCompletionRequest) -> int:
    """A reservation for the token rate limit: about 4 characters a token, plus the output."""
    output = chat.output_limit or DEFAULT_OUTPUT_RESERVE
    return prompt_chars(chat) // 4 + output * (chat.n or 1)
