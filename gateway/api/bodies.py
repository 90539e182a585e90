"""Request bodies: JSON parsing and pydantic validation mapped to OpenAI's 400, one place."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError
from gateway.protocol import ErrorResponse, invalid_from_validation

M = TypeVar("M", bound=BaseModel)

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
#: Every status the gateway answers with an OpenAI error, as the OpenAPI schema describes it.
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "Invalid request: bad JSON, a wrong type, a value out of range"},
    401: {"description": "Missing or invalid API key (when the gateway has keys)"},
    403: {"description": "The API key lacks the scope this endpoint needs"},
    404: {"description": "No such model, route, adapter or inference"},
    408: {"description": "The request body did not arrive within server.body_timeout_s"},
    413: {"description": "The request body is over limits.max_body_bytes"},
    415: {"description": "A request body that is not application/json"},
    429: {"description": "Rate limited: a quota of this gateway or of the upstream"},
    502: {"description": "The engine failed"},
    503: {"description": "Unavailable for now (an engine or the event database)"},
    504: {"description": "The engine did not answer in time"},
}
#: What any endpoint under /v1 may answer: the key ring refuses with 401 or 403, and with 429
#: an address that failed to authenticate too often.
AUTH_ERRORS = (401, 403, 429)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` for a route: each status with OpenAI's error body (and Retry-After)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        entry = {"model": ErrorResponse, **_ERRORS[code]}
        if code in (429, 503):
            entry["headers"] = _RETRY_AFTER
        responses[code] = entry
    return responses


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body we parse ourselves (for the OpenAPI schema)."""
    schema = _inline_defs(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` references replaced by the definitions themselves.

    Pydantic's ``#/$defs/...`` references are relative to the model's own schema; inside the
    OpenAPI document they would point at its root, where nothing is defined, and clients and
    fuzzers could not read the body's shape. The request models are not recursive.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen:
                    raise ValueError(f"recursive request model {name} cannot be inlined")
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[name], (*seen, name)), **resolve(rest, seen)}
            return {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    inlined: dict[str, Any] = resolve(schema, ())
    return inlined


async def read_model(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model``; a 400 naming the field otherwise."""
    try:
        return model.model_validate(parse_json_object(await request.body()))
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body
