"""The vLLM engine: an HTTP client for vLLM's OpenAI server, launched by us or at given URLs.

One pooled ``httpx.AsyncClient`` per engine, so requests reuse keep-alive connections. Streams
are passed through as the bytes vLLM sends; nothing is re-parsed on the way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import orjson

from gateway.engines.base import EngineHealth
from gateway.engines.supervisor import VLLMSupervisor
from gateway.errors import (
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)

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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._client: httpx.AsyncClient | None = None
        self._transport = transport  # a test seam for fault injection
        #: told the ``model`` of a request vLLM answered 404 for (an adapter it lost)
        self.on_model_missing: Callable[[str], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            # The per-read timeout bounds a stalled stream; the total deadline is set per call.
            timeout=httpx.Timeout(self._timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            transport=self._transport,
        )
        if self.supervisor is not None:
            await self.supervisor.start()

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> EngineHealth:
        if self.supervisor is not None and self.supervisor.state != "ready":
            return EngineHealth(False, self.supervisor.state, self.supervisor.detail)
        urls = [self.supervisor.url] if self.supervisor is not None else self._urls
        client = self._require_client()
        down: list[str] = []
        for url in urls:
            try:
                resp = await client.get(f"{url}/health", timeout=2.0)
                if resp.status_code != 200:
                    down.append(f"{url}: HTTP {resp.status_code}")
            except httpx.HTTPError as exc:
                down.append(f"{url}: {type(exc).__name__}")
        if down:
            return EngineHealth(False, "failed", "; ".join(down))
        return EngineHealth(True, "ready")

    # -- requests -------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        url = f"{self._base_url()}/v1/chat/completions"
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await client.post(url, content=orjson.dumps(body), headers=self._headers)
        except TimeoutError:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:
            self._check_missing(resp.status_code, body)
            raise upstream_error(self.model_id, resp.status_code, resp.content, resp.headers)
        result: dict[str, Any] = orjson.loads(resp.content)
        return result

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        client = self._require_client()
        url = f"{self._base_url()}/v1/chat/completions"
        request = client.build_request(
            "POST", url, content=orjson.dumps(body), headers=self._headers
        )
        try:
            resp = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        # Closing the response (also when the client goes away and this generator is closed)
        # closes the upstream connection, which makes vLLM abort the request.
        try:
            if resp.status_code != 200:
                await resp.aread()
                self._check_missing(resp.status_code, body)
                raise upstream_error(self.model_id, resp.status_code, resp.content, resp.headers)
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None
        finally:
            await resp.aclose()

    # -- LoRA adapters (vLLM's runtime API: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) --------------

    @property
    def generation(self) -> int:
        """Changes when the launched vLLM was restarted (and so lost runtime-loaded adapters)."""
        return self.supervisor.restarts if self.supervisor is not None else 0

    async def load_lora(self, name: str, path: str) -> None:
        """Load a LoRA into every vLLM behind this engine; one that has it already counts."""
        for url in self._all_urls():
            resp = await self._lora_post(url, "load", {"lora_name": name, "lora_path": path})
            # vLLM answers 400 for a name it has (e.g. a gateway restarted beside it).
            if resp.status_code == 200 or (
                resp.status_code == 400 and name in await self._served_names(url)
            ):
                continue
            raise lora_error(self.model_id, "load", name, resp)

    async def unload_lora(self, name: str) -> None:
        """Unload a LoRA from every vLLM behind this engine; one that lacks it counts."""
        for url in self._all_urls():
            resp = await self._lora_post(url, "unload", {"lora_name": name})
            if resp.status_code not in (200, 404):
                raise lora_error(self.model_id, "unload", name, resp)

    async def _lora_post(self, url: str, verb: str, body: dict[str, str]) -> httpx.Response:
        client = self._require_client()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await client.post(
                    f"{url}/v1/{verb}_lora_adapter",
                    content=orjson.dumps(body),
                    headers=self._headers,
                )
        except TimeoutError:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    async def _served_names(self, url: str) -> set[str]:
        try:
            resp = await self._require_client().get(f"{url}/v1/models", headers=self._headers)
            return {str(card.get("id")) for card in orjson.loads(resp.content).get("data", [])}
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
            return set()

    def _all_urls(self) -> list[str]:
        return [self._base_url()] if self.supervisor is not None else list(self._urls)

    def _check_missing(self, status: int, body: dict[str, Any]) -> None:
        if status == 404 and self.on_model_missing is not None:
            self.on_model_missing(str(body.get("model")))

    # -- helpers --------------------------------------------------------------------------------

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailableError(f"the engine for '{self.model_id}' is not started")
        return self._client

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

    def _transport_error(self, exc: httpx.HTTPError) -> GatewayError:
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout()
        return EngineUnavailableError(
            f"the engine for '{self.model_id}' is unreachable ({type(exc).__name__})"
        )


def upstream_error(
    model_id: str, status: int, content: bytes, headers: httpx.Headers
) -> GatewayError:
    """Map a non-200 answer from an OpenAI-compatible upstream to the gateway's error tree."""
    message = _upstream_message(content) or f"HTTP {status}"
    if status in (400, 422):
        return UpstreamRejectedError(message)
    if status == 429:
        return UpstreamRateLimitedError(
            f"the engine for '{model_id}' is rate limited: {message}",
            retry_after_s=retry_after_seconds(headers.get("retry-after")),
        )
    if status == 503:
        return EngineUnavailableError(f"the engine for '{model_id}' is unavailable: {message}")
    if status == 504:
        return EngineTimeoutError(f"the engine for '{model_id}' timed out: {message}")
    if status == 404:
        return EngineError(f"the engine for '{model_id}' does not serve it: {message}")
    return EngineError(f"the engine for '{model_id}' failed with HTTP {status}: {message}")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is rare upstream and ignored)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def lora_error(model_id: str, verb: str, name: str, resp: httpx.Response) -> EngineError:
    """vLLM refused to (un)load an adapter: the gateway's setup is wrong, not the request."""
    message = _upstream_message(resp.content) or f"HTTP {resp.status_code}"
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
