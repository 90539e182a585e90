"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from gateway.api.deps import GatewayState, get_state
from gateway.config import LimitsSpec
from gateway.errors import EngineError, GatewayError, InvalidRequestError
from gateway.protocol import ChatCompletionRequest, ErrorResponse

router = APIRouter()

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 502, 503, 504)
}


@router.post(
    "/v1/chat/completions",
    responses=_ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        }
    },
)
async def create_chat_completion(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> Response:
    body = parse_json_object(await request.body())
    chat = validate_request(body)
    check_limits(chat, state.config.limits)
    target = state.target_for(chat.model)
    if chat.stream:
        stream = target.chat_stream(body)
        # Pull the first chunk before answering, so a failure before the first byte is still
        # an ordinary HTTP error with its status code, not a 200 stream with an error inside.
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise EngineError("the engine closed the stream without sending anything") from None
        return StreamingResponse(
            relay(first, stream), media_type="text/event-stream", headers=_SSE_HEADERS
        )
    result = await target.chat(body)
    return Response(orjson.dumps(result), media_type="application/json")


async def relay(first: bytes, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass the engine's SSE bytes through; a failure midway ends with an error event.

    The error event replaces ``data: [DONE]``, so a client can tell a cut stream from a
    finished one.
    """
    try:
        yield first
        async for chunk in stream:
            yield chunk
    except GatewayError as exc:
        yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
    finally:
        # Closing the engine's stream closes the upstream connection (and so cancels the
        # request in vLLM) when the client goes away.
        await stream.aclose()  # type: ignore[attr-defined]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def validate_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def invalid_from_validation(exc: ValidationError) -> InvalidRequestError:
    """The first pydantic error as OpenAI's 400, with ``param`` naming the field."""
    err = exc.errors(include_url=False)[0]
    param = _param_path(err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if param is None and ": " in message:
        # Cross-field checks say which field they are about before the colon.
        param = message.split(": ", 1)[0]
    where = f"'{param}': " if param else ""
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return InvalidRequestError(f"Invalid request: {where}{message}{more}", param=param)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in _UNION_TAGS:
            # pydantic names union branches in the location; they are not the client's keys
            continue
        else:
            path += f".{part}" if path else part
    return path or None


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
