"""The hosted engine: models reached through LiteLLM (OpenAI, Anthropic, a remote vLLM, ...).

LiteLLM is imported lazily in ``start()``: importing it takes seconds and pulls in a large
dependency tree, which a gateway serving only local vLLM models should never pay for.

The client's body is never splatted into ``litellm.acompletion``: LiteLLM reads control
keywords from the same ``**kwargs`` (``api_base``, ``api_key``, ``mock_response``,
``fallbacks``, ``extra_headers``, ``custom_llm_provider``, ...), so a client could otherwise
redirect the gateway's credentials to a host of its choosing. Known OpenAI parameters go in as
named arguments; everything else goes upstream verbatim inside ``extra_body``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import orjson

from gateway.engines.base import EngineHealth, EngineState
from gateway.errors import (
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    RateLimitError,
    UpstreamRejectedError,
)

# Without this LiteLLM downloads its model cost map from GitHub at import time (a network
# fetch on every start, and a warning plus a delay where there is no network).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# In its default "DEV" mode LiteLLM calls load_dotenv() at import, which would quietly load a
# .env file from the working directory into the gateway's environment.
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

log = logging.getLogger(__name__)

# OpenAI chat-completions parameters that acompletion() takes as named arguments. Only these
# come from the body as keyword arguments; see the module docstring for why.
_NAMED_PARAMS: Final = frozenset(
    {
        "messages",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "response_format",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
        "modalities",
        "prediction",
        "audio",
        "reasoning_effort",
        "verbosity",
        "safety_identifier",
        "service_tier",
        "store",
        "prompt_cache_key",
        "web_search_options",
        "functions",
        "function_call",
        "stream_options",
    }
)
# Keys the engine sets itself: the upstream model name and whether to stream.
_ENGINE_KEYS: Final = frozenset({"model", "stream"})
# Named parameters LiteLLM never checks against the provider's list, so they need no opt-in.
_UNCHECKED: Final = frozenset({"messages", "stream_options"})

# "litellm.BadRequestError: Hosted_vllmException - {...}": LiteLLM's prefixes before the
# provider's own text.
_LITELLM_PREFIX: Final = re.compile(r"^litellm\.\w+:\s*")
_PROVIDER_PREFIX: Final = re.compile(r"^\w+Exception\s+-\s+")
_MAX_MESSAGE: Final = 1000


def _import_litellm() -> Any:
    import litellm

    # The "Give Feedback / Get Help" banner and provider lists LiteLLM prints on errors.
    litellm.suppress_debug_info = True
    # Older releases phone home unless this is off; 1.105.3 has no telemetry, so it is inert.
    litellm.telemetry = False
    return litellm


class LiteLLMEngine:
    """An engine for one hosted model; satisfies ``gateway.engines.base.Engine``."""

    def __init__(
        self,
        *,
        model_id: str,
        litellm_model: str,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.model_id = model_id
        self.litellm_model = litellm_model
        self.upstream_model = litellm_model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self._litellm: Any = None
        self._api_key: str | None = None
        self._provider = ""
        # OpenAI parameters LiteLLM lets through for this provider and model without an opt-in.
        self._supported: frozenset[str] = frozenset()
        self._state: EngineState = "stopped"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        api_key: str | None = None
        if self.api_key_env:
            api_key = os.environ.get(self.api_key_env) or None
            if api_key is None:
                raise ValueError(
                    f"model '{self.model_id}': the environment variable {self.api_key_env} is "
                    "not set or empty; it must hold the API key for the hosted provider"
                )
        self._state = "starting"
        try:
            # Off the event loop: the import takes seconds and other engines start meanwhile.
            litellm = await asyncio.to_thread(_import_litellm)
            # Fails fast on a model string LiteLLM cannot route, instead of on the first request.
            try:
                _, provider, _, _ = litellm.get_llm_provider(
                    model=self.litellm_model, api_base=self.api_base
                )
            except Exception as exc:
                raise ValueError(
                    f"model '{self.model_id}': LiteLLM cannot route '{self.litellm_model}' "
                    "(the model string needs a provider prefix such as 'openai/' or "
                    "'hosted_vllm/')"
                ) from exc
            supported = litellm.get_supported_openai_params(
                model=self.litellm_model, custom_llm_provider=provider
            )
        except BaseException:
            self._state = "failed"
            raise
        self._litellm = litellm
        self._provider = str(provider)
        self._supported = frozenset(supported or ())
        self._api_key = api_key
        self._state = "ready"

    async def stop(self) -> None:
        # LiteLLM keeps its HTTP clients in a process-wide cache shared by every LiteLLM engine,
        # so there is nothing per engine to close; forget the key and refuse further calls.
        self._litellm = None
        self._api_key = None
        self._state = "stopped"

    async def health(self) -> EngineHealth:
        # Deliberately no upstream call: a probe per /ready would cost tokens (and money) on a
        # hosted provider. Readiness means configured; failures surface per request.
        if self._state != "ready":
            return EngineHealth(False, self._state)
        return EngineHealth(True, "ready", extra={"provider": self._provider})

    # -- requests -------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        litellm = self._require_started()
        kwargs = self._call_kwargs(body, stream=False)
        try:
            # LiteLLM's timeout bounds each connect/read; this bounds the whole answer.
            async with asyncio.timeout(self.timeout_s):
                response = await litellm.acompletion(**kwargs)
        except GatewayError:
            raise
        except TimeoutError:
            raise self._timeout() from None
        except Exception as exc:
            raise self._map_error(exc) from None
        return _to_dict(response)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        litellm = self._require_started()
        kwargs = self._call_kwargs(body, stream=True)
        try:
            stream = await litellm.acompletion(**kwargs)
        except Exception as exc:
            raise self._map_error(exc) from None
        try:
            try:
                async for chunk in stream:
                    yield b"data: " + orjson.dumps(_to_dict(chunk)) + b"\n\n"
            except Exception as exc:
                raise self._map_error(exc) from None
            yield b"data: [DONE]\n\n"
        finally:
            # Also runs when the client goes away and the API closes this generator: closing
            # LiteLLM's stream closes the upstream connection, so the provider stops generating.
            await stream.aclose()

    # -- helpers --------------------------------------------------------------------------------

    def _require_started(self) -> Any:
        if self._litellm is None:
            raise EngineUnavailableError(f"the engine for '{self.model_id}' is not started")
        return self._litellm

    def _call_kwargs(self, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in body.items():
            if key in _ENGINE_KEYS:
                continue
            if key in _NAMED_PARAMS:
                kwargs[key] = value
            else:
                extra[key] = value
        if not stream:
            # Only meaningful on a stream; upstreams reject it otherwise.
            kwargs.pop("stream_options", None)
        # LiteLLM raises UnsupportedParamsError (or, with drop_params, silently drops) a known
        # OpenAI parameter it believes the provider lacks, and drops 'user' for non-OpenAI model
        # names. The client asked for them: send them as given and let the upstream decide.
        allowed = sorted(k for k in kwargs if k not in self._supported and k not in _UNCHECKED)
        if allowed:
            kwargs["allowed_openai_params"] = allowed
        if extra:
            # For OpenAI-compatible providers LiteLLM merges extra_body into the JSON body; the
            # HTTP handler does the same for the others.
            kwargs["extra_body"] = extra
        return {
            **kwargs,
            "model": self.litellm_model,
            "api_base": self.api_base,
            "api_key": self._api_key,
            "timeout": self.timeout_s,
            "stream": stream,
            # Never drop a parameter behind the client's back, whatever litellm.drop_params says.
            "drop_params": False,
            # The gateway owns retries and fallbacks; the OpenAI SDK would retry twice on its own.
            "max_retries": 0,
        }

    def _timeout(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"the hosted model behind '{self.model_id}' did not answer within {self.timeout_s:g} s"
        )

    def _clean(self, exc: BaseException) -> str:
        """The provider's own words from a LiteLLM exception, without prefixes or secrets."""
        raw = getattr(exc, "message", None)
        text = raw if isinstance(raw, str) else str(exc)
        text = _PROVIDER_PREFIX.sub("", _LITELLM_PREFIX.sub("", text.strip()), count=1)
        text = _provider_error_message(text) or text
        # Providers sometimes echo a (partly masked) key back; never pass ours on.
        if self._api_key:
            text = text.replace(self._api_key, "***")
        if "Traceback (most recent call last)" in text:
            text = text.split("Traceback (most recent call last)", 1)[0].rstrip()
        text = text.strip() or type(exc).__name__
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."

    def _map_error(self, exc: Exception) -> GatewayError:
        """Map one exception from LiteLLM (or below it) to the gateway's error tree."""
        if isinstance(exc, GatewayError):
            return exc
        exceptions = getattr(self._litellm, "exceptions", None)
        if exceptions is None:  # not started; cannot come from LiteLLM
            return EngineError(f"the hosted model behind '{self.model_id}' failed")
        who = f"the hosted model behind '{self.model_id}'"
        # Order matters: Timeout subclasses openai.APIConnectionError, and
        # ContextWindowExceeded/ContentPolicy/UnsupportedParams subclass BadRequestError.
        if isinstance(exc, exceptions.Timeout | TimeoutError):
            return self._timeout()
        if isinstance(exc, exceptions.BadRequestError | exceptions.UnprocessableEntityError):
            return UpstreamRejectedError(self._clean(exc))
        if isinstance(exc, exceptions.AuthenticationError | exceptions.PermissionDeniedError):
            error = EngineError(
                f"{who} rejected the gateway's credentials for '{self.litellm_model}'; "
                "this is a gateway configuration problem, not the client's"
            )
            error.retryable = False
            return error
        if isinstance(exc, exceptions.NotFoundError):
            error = EngineError(
                f"{who}: the upstream does not serve model '{self.litellm_model}' "
                f"({self._clean(exc)})"
            )
            error.retryable = False
            return error
        if isinstance(exc, exceptions.RateLimitError):
            retry_after = _retry_after_s(exc)
            return RateLimitError(
                f"{who} is rate limited upstream: {self._clean(exc)}",
                headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
            )
        if isinstance(exc, exceptions.APIConnectionError):
            return EngineUnavailableError(f"{who} is unreachable: {self._clean(exc)}")
        if isinstance(exc, exceptions.ServiceUnavailableError):
            return EngineUnavailableError(f"{who} is unavailable: {self._clean(exc)}")
        if isinstance(exc, exceptions.InternalServerError | exceptions.BadGatewayError):
            return EngineError(f"{who} failed upstream: {self._clean(exc)}")
        if isinstance(exc, tuple(exceptions.LITELLM_EXCEPTION_TYPES)):
            status = getattr(exc, "status_code", None)
            if status in (400, 422):
                return UpstreamRejectedError(self._clean(exc))
            return EngineError(f"{who} failed: {self._clean(exc)}")
        # Not a LiteLLM error type: a bug or an unwrapped transport error. Its text may hold
        # internals, so the client gets the type only and the log gets the rest.
        log.warning(
            "unexpected %s from LiteLLM for model %s", type(exc).__name__, self.model_id,
            exc_info=exc,
        )  # fmt: skip
        return EngineError(f"{who} failed ({type(exc).__name__})")


def _to_dict(response: Any) -> dict[str, Any]:
    """A LiteLLM response or stream chunk as a plain, JSON-serialisable OpenAI dict."""
    data: dict[str, Any] = response.model_dump(mode="json")
    return data


def _provider_error_message(text: str) -> str | None:
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


def _retry_after_s(exc: Exception) -> int | None:
    """Whole seconds from the upstream's retry-after(-ms) header, when it sent one."""
    sources: list[Mapping[str, Any]] = []
    headers = getattr(exc, "headers", None)
    if isinstance(headers, Mapping):
        sources.append({str(k).lower(): v for k, v in headers.items()})
    response = getattr(exc, "response", None)
    response_headers = getattr(response, "headers", None)
    if response_headers is not None:
        sources.append({str(k).lower(): v for k, v in response_headers.items()})
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
