"""POST /v1/chat/completions."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from gateway.api.bodies import invalid_from_validation, json_body, parse_json_object
from gateway.api.deps import GatewayState, get_state, require_dispatcher
from gateway.config import LimitsSpec
from gateway.errors import GatewayError, InvalidRequestError
from gateway.protocol import ChatCompletionRequest, ErrorResponse

router = APIRouter()

INFERENCE_ID = "x-switchboard-inference-id"

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 502, 503, 504)
}


@router.post(
    "/v1/chat/completions",
    responses=_ERROR_RESPONSES,
    openapi_extra=json_body(ChatCompletionRequest),
)
async def create_chat_completion(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> Response:
    started = time.perf_counter()
    dispatcher = require_dispatcher(state)
    model: str | None = None
    try:
        body = parse_json_object(await request.body())
        model = body.get("model") if isinstance(body.get("model"), str) else None
        chat = validate_request(body)
        check_limits(chat, state.config.limits)
        if chat.stream:
            # The dispatcher pulls the first chunk before we answer, so a failure before the
            # first byte is still an HTTP error with its status, not a 200 with an error inside.
            stream, headers = await dispatcher.stream(chat, body, request.headers)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
            )
        result, headers = await dispatcher.complete(chat, body, request.headers)
    except GatewayError as exc:
        if INFERENCE_ID not in exc.headers:
            # Refused before any variant ran: logged too, every request is.
            exc.headers[INFERENCE_ID] = dispatcher.record_rejection(model, exc, started)
        raise
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


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
