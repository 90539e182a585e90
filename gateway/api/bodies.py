"""Request bodies: JSON parsing and pydantic validation mapped to OpenAI's 400, one place."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body we parse ourselves (for the OpenAPI schema)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
