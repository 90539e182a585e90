"""The vLLM engine: an HTTP client for vLLM's OpenAI server, launched by us or at given URLs.

One pooled ``aiohttp`` session per engine, so requests reuse keep-alive connections. aiohttp,
not httpx: on the gateway's hot path httpx cost about 1 ms per request against aiohttp's 0.2 ms
(docs/benchmarks.md, "Where Switchboard's time went"). Streams are passed through as the
bytes vLLM sends; nothing is re-parsed on the way.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.engines.base import EngineHealth
from gateway.engines.supervisor import VLLMSupervisor
from gateway.engines.vllm_errors import rejected_error
from gateway.errors import (
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    UpstreamRateLimitedError,
)
from gateway.telemetry import tracing

_JSON = {"content-type": "application/json"}


class VLLMEngine:
    def __init__(
        self,
        *,
        model_id: str,
        upstream_model: str,
        urls: Sequence[str] = (),
        supervisor: VLLMSupervisor | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if bool(urls) == (supervisor is not None):
            raise ValueError("a vLLM engine needs either urls or a supervisor")
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.supervisor = supervisor
        self._urls = list(urls)
        self._next_url = itertools.cycle(self._urls)
        self._headers = dict(_JSON)
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._parsed: dict[tuple[str, str], URL] = {}
        #: told the ``model`` of a request vLLM answered 404 for (an adapter it lost)
        self.on_model_missing: Callable[[str], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30),
            # The per-read limit bounds a stalled stream; the total is set per call.
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self._timeout_s),
            # vLLM answers uncompressed; skipping the Accept-Encoding header keeps it so.
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            auto_decompress=False,
        )
        if self.supervisor is not None:
            await self.supervisor.start()

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> EngineHealth:
        if self.supervisor is not None and self.supervisor.state != "ready":
            return EngineHealth(False, self.supervisor.state, self.supervisor.detail)
        urls = [self.supervisor.url] if self.supervisor is not None else self._urls
        session = self._require_session()
        down: list[str] = []
        for url in urls:
            try:
                async with session.get(
                    f"{url}/health", timeout=aiohttp.ClientTimeout(total=2.0)
                ) as resp:
                    if resp.status != 200:
                        down.append(f"{url}: HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                down.append(f"{url}: {type(exc).__name__}")
        if down:
            return EngineHealth(False, "failed", "; ".join(down))
        return EngineHealth(True, "ready")

    # -- requests -------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        status, content, headers = await self._post("/v1/chat/completions", body)
        if status != 200:
            self._check_missing(status, body)
            raise upstream_error(self.model_id, status, content, headers)
        return completion_of(self.model_id, content)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        session = self._require_session()
        url = self._url(self._base_url(), "/v1/chat/completions")
        try:
            # The current span's traceparent goes upstream when traced (vLLM can join it).
            headers = tracing.upstream_headers(self._headers)
            resp = await session.post(url, data=orjson.dumps(body), headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from None
        finished = False
        try:
            if resp.status != 200:
                content = await resp.read()
                self._check_missing(resp.status, body)
                raise upstream_error(self.model_id, resp.status, content, resp.headers)
            if not resp.content_type.startswith("text/event-stream"):
                # A 200 that is not a stream would be relayed as an empty, "successful" one.
                raise EngineError(
                    f"the engine for '{self.model_id}' answered a stream request with "
                    f"'{resp.content_type or 'no content type'}', not an event stream"
                )
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._transport_error(exc) from None
            finished = True
        finally:
            # A stream read to its end goes back to the pool. One left early (the client went
            # away, or the stream failed) closes its connection, which makes vLLM abort it.
            if finished:
                resp.release()
            else:
                resp.close()

    async def _post(
        self, path: str, body: dict[str, Any], url: str | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._require_session()
        target = self._url(url or self._base_url(), path)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(
                    target,
                    data=orjson.dumps(body),
                    headers=tracing.upstream_headers(self._headers),
                ) as resp:
                    return resp.status, await resp.read(), resp.headers
        except TimeoutError:
            raise self._timeout() from None
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc) from None

    # -- LoRA adapters (vLLM's runtime API: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) --------------

    @property
    def generation(self) -> int:
        """Changes when the launched vLLM was restarted (and so lost runtime-loaded adapters)."""
        return self.supervisor.restarts if self.supervisor is not None else 0

    async def load_lora(self, name: str, path: str) -> None:
        """Load a LoRA into every vLLM behind this engine; one that has it already counts."""
        for url in self._all_urls():
            body = {"lora_name": name, "lora_path": path}
            status, content, _ = await self._post("/v1/load_lora_adapter", body, url)
            # vLLM answers 400 for a name it has (e.g. a gateway restarted beside it).
            if status == 200 or (status == 400 and name in await self._served_names(url)):
                continue
            raise lora_error(self.model_id, "load", name, status, content)

    async def unload_lora(self, name: str) -> None:
        """Unload a LoRA from every vLLM behind this engine; one that lacks it counts."""
        for url in self._all_urls():
            status, content, _ = await self._post(
                "/v1/unload_lora_adapter", {"lora_name": name}, url
            )
            if status not in (200, 404):
                raise lora_error(self.model_id, "unload", name, status, content)

    async def _served_names(self, url: str) -> set[str]:
        try:
            async with self._require_session().get(
                f"{url}/v1/models", headers=self._headers
            ) as resp:
                data = orjson.loads(await resp.read())
            return {str(card.get("id")) for card in data.get("data", [])}
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError):
            return set()

    def _all_urls(self) -> list[str]:
        return [self._base_url()] if self.supervisor is not None else list(self._urls)

    def _check_missing(self, status: int, body: dict[str, Any]) -> None:
        if status == 404 and self.on_model_missing is not None:
            self.on_model_missing(str(body.get("model")))

    # -- helpers --------------------------------------------------------------------------------

    def _url(self, base: str, path: str) -> URL:
        """Parsed once per address: aiohttp parses a string URL on every request."""
        url = self._parsed.get((base, path))
        if url is None:
            url = self._parsed[(base, path)] = URL(base + path)
        return url

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineUnavailableError(f"the engine for '{self.model_id}' is not started")
        return self._session

    def _base_url(self) -> str:
        if self.supervisor is None:
            return next(self._next_url)
        if self.supervisor.state != "ready":
            raise EngineUnavailableError(
                f"the engine for '{self.model_id}' is {self.supervisor.state}; retry shortly"
            )
        return self.supervisor.url

    def _timeout(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"the engine for '{self.model_id}' did not answer within {self._timeout_s:g} s"
        )

    def _transport_error(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            return self._timeout()
        return EngineUnavailableError(
            f"the engine for '{self.model_id}' is unreachable ({type(exc).__name__})"
        )


def upstream_error(
    model_id: str, status: int, content: bytes, headers: Mapping[str, str]
) -> GatewayError:
    """Map a non-200 answer from an OpenAI-compatible upstream to the gateway's error tree."""
    message = _upstream_message(content) or f"HTTP {status}"
    if status in (400, 422):
        # OpenAI's shape with param, and sentences instead of vLLM's pydantic dump
        return rejected_error(model_id, content, message)
    if status == 429:
        return UpstreamRateLimitedError(
            f"the engine for '{model_id}' is rate limited: {message}",
            retry_after_s=retry_after_seconds(headers.get("retry-after")),
        )
    if status == 503:
        # The engine's own Retry-After is passed on: it knows when it will be back.
        wait = retry_after_seconds(headers.get("retry-after"))
        return EngineUnavailableError(
            f"the engine for '{model_id}' is unavailable: {message}",
            retry_after_s=max(1, math.ceil(wait)) if wait is not None else 5,
        )
    if status == 504:
        return EngineTimeoutError(f"the engine for '{model_id}' timed out: {message}")
    if status == 404:
        return EngineError(f"the engine for '{model_id}' does not serve it: {message}")
    return EngineError(f"the engine for '{model_id}' failed with HTTP {status}: {message}")


def completion_of(model_id: str, content: bytes) -> dict[str, Any]:
    """A 200's body as a chat completion; an engine error (502) when it cannot be one.

    The shape is checked where the rest of the gateway reads it (an object, ``choices`` a list,
    ``usage`` an object), so a broken engine is the engine's error, logged with its attempt,
    never a 500 from deeper down.
    """
    try:
        result = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise EngineError(
            f"the engine for '{model_id}' answered 200 with a body that is not JSON: "
            f"{content[:200].decode('utf-8', 'replace')!r}"
        ) from None
    problem = None
    if not isinstance(result, dict):
        problem = f"a JSON {type(result).__name__}, not an object"
    elif not isinstance(result.get("choices", []), list):
        problem = "'choices' that is not a list"
    elif not isinstance(result.get("usage") or {}, dict):
        problem = "'usage' that is not an object"
    if problem is not None:
        raise EngineError(f"the engine for '{model_id}' answered 200 with {problem}")
    return result  # type: ignore[no-any-return]


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is rare upstream and ignored)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def lora_error(model_id: str, verb: str, name: str, status: int, content: bytes) -> EngineError:
    """vLLM refused to (un)load an adapter: the gateway's setup is wrong, not the request."""
    message = _upstream_message(content) or f"HTTP {status}"
    return EngineError(
        f"the engine for '{model_id}' could not {verb} adapter '{name}': {message}",
        code="adapter_load_failed",
    )


def _upstream_message(content: bytes) -> str | None:
    """The message of an OpenAI-shaped error body (vLLM uses both the nested and flat forms)."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:500].decode("utf-8", "replace").strip() or None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return None
