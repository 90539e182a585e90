"""One error tree for the whole gateway, mapped once to OpenAI's error JSON.

Every failure a client can see is a ``GatewayError``. Handlers raise; ``app.py`` installs a
single exception handler that turns the error into ``{"error": {message, type, param, code}}``
with the right status and headers. Nothing else in the code base builds error responses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error that reaches a client."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    """The request is malformed or a parameter is out of range (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist. GET /v1/models lists the models served here.",
            param="model",
        )


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class ClientClosedRequest(GatewayError):
    """The client went away before the answer (nginx's 499); nobody reads this response."""

    status_code = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class EngineError(GatewayError):
    """The engine behind a model failed; ``retryable`` tells whether another try may succeed."""

    status_code = 502
    error_type = "api_error"
    default_code = "upstream_error"
    retryable: bool = True


class EngineUnavailableError(EngineError):
    """The engine is starting, restarting or unreachable (503 with Retry-After)."""

    status_code = 503
    default_code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class EngineTimeoutError(EngineError):
    status_code = 504
    default_code = "upstream_timeout"


class UpstreamRateLimitedError(EngineError):
    """The engine answered 429: worth a retry only when it said when (Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else None
        super().__init__(message, headers=headers)
        self.retry_after_s = retry_after_s
        self.retryable = retry_after_s is not None


class DeadlineExceededError(EngineError):
    """The request's one deadline passed: nothing is retried after it."""

    status_code = 504
    default_code = "deadline_exceeded"
    retryable = False


class StreamStalledError(EngineError):
    """No chunk arrived within the stream gap limit (reported in-band, the stream has begun)."""

    status_code = 504
    default_code = "stream_stalled"
    retryable = False


class UpstreamRejectedError(GatewayError):
    """The engine refused the request as invalid: the client's fault, never retried."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "upstream_rejected"


class ConfigError(Exception):
    """A configuration problem, reported before anything starts.

    Not a ``GatewayError``: it never reaches a client; the CLI prints it and exits 2.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration\n{lines}")
