"""The one place errors become OpenAI's error JSON, for every route of the app."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import (
    GatewayError,
    InternalServerError,
    InvalidRequestError,
    UnroutedRequestError,
    render,
)

log = logging.getLogger(__name__)


def error_response(exc: GatewayError) -> JSONResponse:
    """``exc`` as the client sees it: ``render``'s JSON at the error's status and headers."""
    return JSONResponse(render(exc), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """The one place errors become OpenAI's error JSON.

    Errors FastAPI and Starlette raise themselves become the matching ``GatewayError`` first,
    so that every body the app answers with goes through ``render``.
    """

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"Invalid request: {first.get('msg', 'bad input')}"
        return error_response(InvalidRequestError(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(
            UnroutedRequestError(exc.status_code, str(exc.detail), headers=headers)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(InternalServerError())
