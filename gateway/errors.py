"""Every error the gateway raises on purpose, in one tree, mapped once to OpenAI's error JSON.

The tree (``SwitchboardError`` is the root; ``exit`` is the ``gateway`` command's status)::

    SwitchboardError                  anything the package raises on purpose (exit 1)
    ├── GatewayError                  reaches a client: OpenAI's error JSON, a status (500)
    │   ├── InvalidRequestError       a malformed request or a parameter out of range (400)
    │   │   └── InvalidAdapterError   a bad adapter name or folder (400)
    │   ├── AuthenticationError       no or a wrong API key (401)
    │   ├── PermissionDeniedError     the key lacks the scope (403)
    │   ├── NotFoundError             (404)
    │   │   ├── ModelNotFoundError    no model, adapter or route of that name
    │   │   └── AdapterNotFoundError  no adapter of that name in the registry
    │   ├── PayloadTooLargeError      the body is over limits.max_body_bytes (413)
    │   ├── RequestTimeoutError       the body did not arrive in time (408)
    │   ├── UnsupportedMediaTypeError a POST body not declared JSON (415)
    │   ├── ClientClosedRequest       the client went away first (499, nobody reads it)
    │   ├── RateLimitError            a quota of this gateway (429)
    │   ├── UpstreamRejectedError     the engine refused the request as invalid (400)
    │   ├── StoreUnavailableError     the event database is down for now (503)
    │   ├── ShuttingDownError         the drain ran out before the stream ended (503, in-band)
    │   ├── StateUnavailableError     shared limits down, on_unavailable: closed (503)
    │   ├── UnroutedRequestError      Starlette answered by itself: no such path, method (4xx)
    │   ├── ConnectionRefusedByGuard  the HTTP guard refused it before the app (4xx, 503)
    │   ├── InternalServerError       a bug: logged, answered without details (500)
    │   └── EngineError               the engine failed; ``retryable`` says if a retry may help
    │       ├── EngineUnavailableError     starting, restarting or unreachable (503)
    │       ├── EngineTimeoutError         (504)
    │       ├── UpstreamRateLimitedError   the engine answered 429
    │       ├── DeadlineExceededError      the request's one deadline passed (504)
    │       └── StreamStalledError         no chunk within the gap limit (504, in-band)
    ├── InputError                    bad input or configuration, found before work starts (exit 2)
    │   ├── ConfigError               gateway.yaml: every problem, naming the file and key
    │   ├── PipelineError             a pipeline folder that cannot be served
    │   ├── TemplateError             a template that does not compile or render
    │   ├── BankError (ValueError)         an exemplar bank that cannot be used
    │   ├── DataError (ValueError)         labelled data: names the file and line
    │   ├── ScorerError (ValueError)       a scorer that cannot be built
    │   ├── TrainingDataError (ValueError) training data: names the file and line
    │   └── AdapterProblems           an adapter folder: one line per problem
    └── RunError                      a step failed while running (exit 1)
        ├── EngineStartError          vLLM did not become healthy
        ├── PreparationError          a packaged model could not be prepared
        ├── BuildError                an exemplar bank could not be built
        ├── TrainingError             training could not start or finish
        ├── EvalError                 an evaluation run cannot start or go on
        ├── BackendError              the gateway under evaluation cannot be used
        └── StoreError                the event database is unreachable or refused a write
            └── StoreDataError        it refused the rows as data: they will fail again

Why one root with ``GatewayError`` under it rather than two roots: the ``gateway`` command
catches ``SwitchboardError`` once (``cli/common.py``) and turns any of them into one line and
an exit status, including the ``GatewayError`` a domain call raises (``adapters show`` of an
unknown name). ``InputError`` and ``RunError`` split the rest by who must act: the user fixes
their input (exit 2) or retries once the world is better (exit 1). The four ``ValueError``
subclasses stay ``ValueError``: parsers raise them where a ``ValueError`` is expected.

HTTP: handlers raise; ``render`` is the one function that writes ``{"error": {message, type,
param, code}}`` (``GatewayError.to_dict`` calls it); ``api/errors.py`` answers with it at the
error's status and headers, and the stream relay sends it as the last SSE event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class SwitchboardError(Exception):
    """Root of the tree: the CLI prints its message on one line and exits ``exit_code``."""

    exit_code: ClassVar[int] = 1


class InputError(SwitchboardError):
    """Bad input or configuration: the message names the file, the key and the fix."""

    exit_code = 2


class RunError(SwitchboardError):
    """A step failed while running; the message says what failed and what to do."""


def render(error: GatewayError) -> dict[str, Any]:
    """OpenAI's error JSON for ``error``: the only place in the package that writes its shape."""
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


class GatewayError(SwitchboardError):
    """Base of every error that reaches a client."""

    # Class defaults that an instance may narrow (``UnroutedRequestError`` takes Starlette's).
    status_code: int = 500
    error_type: str = "server_error"
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
        return render(self)


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


class AdapterNotFoundError(NotFoundError):
    default_code = "adapter_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"No adapter named '{name}' in the registry. GET /v1/adapters lists them.",
            param="name",
        )


class InvalidAdapterError(InvalidRequestError):
    """A bad adapter name, or an adapter folder that fails validation (400)."""

    default_code = "invalid_adapter"


class StoreUnavailableError(GatewayError):
    """The event database cannot be read or written now (503): retry later."""

    status_code = 503
    error_type = "api_error"
    default_code = "store_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StateUnavailableError(GatewayError):
    """The shared state (Redis) is down and ``state.on_unavailable`` is ``closed`` (503)."""

    status_code = 503
    error_type = "api_error"
    default_code = "state_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class UnroutedRequestError(GatewayError):
    """A status Starlette answers by itself (no such path 404, method not allowed 405)."""

    def __init__(
        self, status_code: int, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, headers=headers)
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"


class RequestTimeoutError(GatewayError):
    """The body did not arrive within ``server.body_timeout_s`` (408)."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class UnsupportedMediaTypeError(GatewayError):
    """A body that is not declared JSON (415): a web page's form or text POST is refused."""

    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("Send the request body as JSON, with 'Content-Type: application/json'.")


class ShuttingDownError(GatewayError):
    """The server stopped before the stream ended: its drain time ran out (503, in-band)."""

    status_code = 503
    error_type = "server_error"
    default_code = "shutting_down"


class ConnectionRefusedByGuard(GatewayError):
    """The HTTP guard (admission/http_guard.py) refused a request before it reached the app:
    headers too large or too slow, a foreign Host, malformed HTTP, no connection left."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"


class InternalServerError(GatewayError):
    """An exception nobody expected: logged with its traceback, answered without details."""

    def __init__(self) -> None:
        super().__init__("The gateway hit an internal error; it has been logged.")


class ConfigError(InputError):
    """A configuration problem, reported before anything starts.

    Not a ``GatewayError``: it never reaches a client; the CLI prints it and exits 2.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration\n{lines}")


class PipelineError(InputError):
    """A pipeline folder that cannot be served; one problem per entry."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class TemplateError(InputError):
    """A template that does not compile, reads an unknown variable, or fails to render."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class BankError(InputError, ValueError):
    """A bank that cannot be used; the message names the file (and line)."""


class DataError(InputError, ValueError):
    """Bad labelled data; the message names the file and line."""


class ScorerError(InputError, ValueError):
    """A scorer that cannot be built; the message says where and how to fix it."""


class TrainingDataError(InputError, ValueError):
    """Bad training data; the message names the file and line."""


class AdapterProblems(InputError):
    """An adapter folder that cannot be served; each line names the file, the key and a fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class EngineStartError(RunError):
    """vLLM did not become healthy; the message carries the tail of its log."""


class PreparationError(RunError):
    """Preparing a packaged model failed; the message says what failed and what to do."""


class BuildError(RunError):
    """The bank cannot be built as asked; the message says what to do."""


class TrainingError(RunError):
    """Training cannot start or did not finish; nothing was written."""


class EvalError(RunError):
    """A run that cannot start or go on; the message says how to fix it."""


class BackendError(RunError):
    """The evaluation cannot go on (the gateway is unreachable, the route is unknown)."""


class StoreError(RunError):
    """The database could not be reached or refused a write."""


class StoreDataError(StoreError):
    """The database refused the rows as data (not an outage): the same rows will fail again."""
