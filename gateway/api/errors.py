"""The one place errors become OpenAI's error JSON, for every route of the app."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    """The one place errors become OpenAI's error JSON."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = {
            "message": f"Invalid request: {first.get('msg', 'bad input')}",
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
        return JSONResponse({"error": body}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = {"message": str(exc.detail), "type": kind, "param": None, "code": None}
        return JSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        body = {
            "message": "The gateway hit an internal error; it has been logged.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        return JSONResponse({"error": body}, status_code=500)
