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
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import orjson

from gateway.engines.base import EngineHealth, EngineState
from gateway.engines.hosted_errors import map_error
from gateway.errors import (
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
)

# Without this LiteLLM downloads its model cost map from GitHub at import time (a network
# fetch on every start, and a warning plus a delay where there is no network).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# In its default "DEV" mode LiteLLM calls load_dotenv() at import, which would quietly load a
# .env file from the working directory into the gateway's environment.
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
# Otherwise LiteLLM appends a "This looks like a bug in LiteLLM ... File it with one click" link
# to the text of unexpected errors, which ends up in our logs.
os.environ.setdefault("LITELLM_DISABLE_BUG_REPORT_LINK", "true")

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

# LiteLLM's HTTP clients live in one process-wide cache shared by every LiteLLM engine; they
# are closed when the last started engine stops (else their sockets leak: ResourceWarning).
_started_engines = 0


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
        # Whether the provider speaks OpenAI's API itself (openai, hosted_vllm, groq, ...).
        self._openai_compatible = False
        self._state: EngineState = "stopped"
        # Whether this engine counts in _started_engines (started and not stopped since).
        self._counted = False

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
        self._openai_compatible = self._provider in {"openai", "azure"} or self._provider in set(
            litellm.openai_compatible_providers
        )
        self._api_key = api_key
        if not self._counted:
            global _started_engines
            _started_engines += 1
            self._counted = True
        self._state = "ready"

    async def stop(self) -> None:
        litellm = self._litellm
        self._litellm = None
        self._api_key = None
        self._state = "stopped"
        if not self._counted or litellm is None:
            return
        self._counted = False
        global _started_engines
        _started_engines -= 1
        if _started_engines > 0:
            return  # the shared clients still serve other engines
        try:
            from litellm.llms.custom_httpx import async_client_cleanup

            close_clients: Callable[[], Awaitable[None]] = (
                async_client_cleanup.close_litellm_async_clients
            )
            await close_clients()
            # Closed clients must not be handed out again if an engine starts later.
            litellm.in_memory_llm_clients_cache.flush_cache()
        except Exception:  # best effort: shutting down must not fail on cleanup
            log.debug("closing LiteLLM's HTTP clients failed", exc_info=True)

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
                    yield b"data: " + orjson.dumps(_chunk_dict(chunk)) + b"\n\n"
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
        if self._openai_compatible:
            # LiteLLM raises UnsupportedParamsError (or, with drop_params, silently drops) a
            # known OpenAI parameter missing from its list for the model, and drops 'user' for
            # model names it does not know. An OpenAI-compatible upstream takes them as they
            # are: send them and let it decide. Other providers keep LiteLLM's translation and
            # its UnsupportedParamsError (a 400 naming the parameter): sent raw, even a
            # harmless n=1 would make, say, Anthropic reject the request.
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

    def _map_error(self, exc: Exception) -> GatewayError:
        return map_error(
            exc,
            litellm=self._litellm,
            model_id=self.model_id,
            litellm_model=self.litellm_model,
            where=self.api_base or f"the {self._provider} API",
            api_key=self._api_key,
            timeout=self._timeout,
        )

    def _timeout(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"the hosted model behind '{self.model_id}' did not answer within {self.timeout_s:g} s"
        )


def _to_dict(response: Any) -> dict[str, Any]:
    """A LiteLLM response or stream chunk as a plain, JSON-serialisable OpenAI dict."""
    data: dict[str, Any] = response.model_dump(mode="json")
    return data


def _chunk_dict(chunk: Any) -> dict[str, Any]:
    """A stream chunk as OpenAI sends it.

    LiteLLM gives the include_usage chunk one choice with an empty delta; OpenAI (and vLLM)
    send it with ``choices: []``, which is what clients test for to spot the usage chunk.
    """
    data = _to_dict(chunk)
    choices = data.get("choices")
    if data.get("usage") and isinstance(choices, list) and all(map(_is_empty_choice, choices)):
        data["choices"] = []
    return data


def _is_empty_choice(choice: Any) -> bool:
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    if choice.get("logprobs"):
        return False
    delta = choice.get("delta") or {}
    return (
        isinstance(delta, dict)
        and not any(
            delta.get(k)
            for k in ("content", "role", "tool_calls", "function_call", "audio", "refusal")
        )
        and not delta.get("reasoning_content")
    )
