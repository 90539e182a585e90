"""How the hosted engine reads LiteLLM's exceptions: what failed, in the provider's own words.

LiteLLM wraps every provider's failure in its own classes, sometimes wrongly (a refused
connection arrives as a 500); this module looks under them for the truth and maps each failure
to the gateway's error tree, with the provider's message cleaned of prefixes and secrets.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx
import orjson

from gateway.errors import (
    EngineError,
    EngineUnavailableError,
    GatewayError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)

log = logging.getLogger("gateway.engines.hosted")

# "litellm.InternalServerError: InternalServerError: OpenAIException - {...}": the prefixes
# LiteLLM puts before the provider's own text.
_LITELLM_PREFIX: Final = re.compile(r"^(?:litellm\.\w+:|\w+Error:|\w+Exception\s+-)\s*")
_MAX_MESSAGE: Final = 1000
_KIND_BY_STATUS: Final = {
    400: "rejected",
    422: "rejected",
    401: "credentials",
    403: "credentials",
    404: "not_found",
    408: "timeout",
    504: "timeout",
    429: "rate_limited",
    503: "unavailable",
}
# How many exception causes to follow when looking for the transport error under LiteLLM's.
_MAX_CHAIN: Final = 10


def map_error(
    exc: Exception,
    *,
    litellm: Any,
    model_id: str,
    litellm_model: str,
    where: str,
    api_key: str | None,
    timeout: Callable[[], GatewayError],
) -> GatewayError:
    """Map one exception from LiteLLM (or below it) to the gateway's error tree."""
    if isinstance(exc, GatewayError):
        return exc
    kind = error_kind(litellm, exc)
    who = f"the hosted model behind '{model_id}'"
    if kind == "timeout":
        return timeout()
    if kind == "rejected":
        return UpstreamRejectedError(clean_message(exc, api_key))
    if kind == "credentials":
        error = EngineError(
            f"{who} rejected the gateway's credentials for '{litellm_model}'; "
            "this is a gateway configuration problem, not the client's"
        )
        error.retryable = False
        return error
    if kind == "not_found":
        error = EngineError(
            f"{who}: the upstream does not serve model '{litellm_model}' "
            f"({clean_message(exc, api_key)})"
        )
        error.retryable = False
        return error
    if kind == "rate_limited":
        return UpstreamRateLimitedError(
            f"{who} is rate limited upstream: {clean_message(exc, api_key)}",
            retry_after_s=retry_after_s(exc),
        )
    if kind == "unreachable":
        return EngineUnavailableError(f"{who} is unreachable: cannot connect to {where}")
    if kind == "unavailable":
        return EngineUnavailableError(
            f"{who} is unavailable: {clean_message(exc, api_key)}",
            retry_after_s=retry_after_s(exc) or 5,
        )
    if kind == "failed":
        return EngineError(f"{who} failed upstream: {clean_message(exc, api_key)}")
    # Not a LiteLLM error type: a bug or an unwrapped transport error. Its text may hold
    # internals, so the client gets the type only and the log gets the rest.
    log.warning(
        "unexpected %s from LiteLLM for model %s", type(exc).__name__, model_id,
        exc_info=exc,
    )  # fmt: skip
    return EngineError(f"{who} failed ({type(exc).__name__})")


def error_kind(litellm: Any, exc: Exception) -> str:
    """Classify a LiteLLM exception: by class first, then by the upstream's status."""
    exceptions = getattr(litellm, "exceptions", None)
    if exceptions is None:  # not started, so it cannot come from LiteLLM
        return "unknown"
    # Order matters: Timeout subclasses openai.APIConnectionError, and
    # ContextWindowExceeded/ContentPolicy/UnsupportedParams subclass BadRequestError.
    if isinstance(exc, exceptions.Timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, exceptions.BadRequestError | exceptions.UnprocessableEntityError):
        return "rejected"
    if isinstance(exc, exceptions.AuthenticationError | exceptions.PermissionDeniedError):
        return "credentials"
    if isinstance(exc, exceptions.NotFoundError):
        return "not_found"
    if isinstance(exc, exceptions.RateLimitError):
        return "rate_limited"
    # LiteLLM 1.105.3 reports a refused connection as InternalServerError (500), for
    # 'openai/' and 'hosted_vllm/' alike; the transport error under it tells the truth.
    transport = transport_error(exc)
    if isinstance(transport, httpx.ConnectError | ConnectionRefusedError):
        return "unreachable"
    if isinstance(exc, exceptions.ServiceUnavailableError):
        return "unavailable"
    if transport is not None:  # the connection broke after it was made
        return "failed"
    # APIConnectionError is also LiteLLM's wrapper for *any* unexpected exception inside
    # completion() (its own bugs included), so without a transport error under it, it says
    # nothing about the network: treat it as unknown (logged, type-only message).
    if isinstance(exc, exceptions.APIConnectionError) or not isinstance(
        exc, tuple(exceptions.LITELLM_EXCEPTION_TYPES)
    ):
        return "unknown"
    # A plain APIError: LiteLLM 1.105.3 raises one for statuses it has no class for on
    # OpenAI-compatible providers, 403 among them.
    status = getattr(exc, "status_code", None)
    return _KIND_BY_STATUS.get(status if isinstance(status, int) else 0, "failed")


def clean_message(exc: BaseException, api_key: str | None) -> str:
    """The provider's own words from a LiteLLM exception, without prefixes or secrets."""
    raw = getattr(exc, "message", None)
    text = raw if isinstance(raw, str) else str(exc)
    text = text.strip()
    for _ in range(3):
        text = _LITELLM_PREFIX.sub("", text, count=1)
    text = provider_error_message(text) or text
    # UnsupportedParamsError goes on with advice for LiteLLM's own users ("To drop these,
    # set `litellm.drop_params=True`..."), which means nothing to our client.
    text = text.split("To drop these", 1)[0].rstrip(" .\n") or text
    # Providers sometimes echo a (partly masked) key back; never pass ours on.
    if api_key:
        text = text.replace(api_key, "***")
    if "Traceback (most recent call last)" in text:
        text = text.split("Traceback (most recent call last)", 1)[0].rstrip()
    text = text.strip() or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def transport_error(exc: BaseException) -> BaseException | None:
    """The transport failure (other than a timeout) somewhere under a LiteLLM exception."""
    seen: BaseException | None = exc
    for _ in range(_MAX_CHAIN):
        if seen is None:
            return None
        if isinstance(seen, httpx.TransportError) and not isinstance(seen, httpx.TimeoutException):
            return seen
        if isinstance(seen, ConnectionError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def provider_error_message(text: str) -> str | None:
    """The ``error.message`` when the text is an OpenAI-shaped JSON error body."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        data = orjson.loads(text[start:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return None


def retry_after_s(exc: Exception) -> int | None:
    """Whole seconds from the upstream's retry-after(-ms) header, when it sent one."""
    # LiteLLM 1.105.3 keeps the upstream's headers in litellm_response_headers (a dict or
    # httpx.Headers); ``headers`` and ``response.headers`` are looked at for older shapes.
    candidates = (
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    )
    sources = [
        {str(k).lower(): v for k, v in found.items()}
        for found in candidates
        if isinstance(found, Mapping | httpx.Headers)
    ]
    for found in sources:
        milliseconds = found.get("retry-after-ms")
        if milliseconds is not None:
            try:
                return max(0, math.ceil(float(milliseconds) / 1000))
            except ValueError:
                pass
        value = found.get("retry-after")
        if value is None:
            continue
        try:
            return max(0, math.ceil(float(value)))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            continue
        return max(0, math.ceil(when.timestamp() - time.time()))
    return None
