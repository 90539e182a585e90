"""The vLLM engine: an HTTP client for vLLM's OpenAI server, launched by us or at given URLs.

One pooled ``aiohttp`` session per engine, so requests reuse keep-alive connections. aiohttp,
not httpx: on the gateway's hot path httpx cost about 1 ms per request against aiohttp's 0.2 ms
(docs/benchmarks.md, "Where Switchboard's time went"). Streams are passed through as the
bytes vLLM sends; nothing is re-parsed on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.config.scale import BalanceSpec
from gateway.engines.base import EngineHealth
from gateway.engines.fleet import AFFINITY, Fleet, Replica, check_forever
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
    """One model's vLLM servers: fixed ``urls``, or launched ones (a supervisor each).

    Several of them are a fleet (``fleet.py``): balanced per request, health-checked, ejected
    and admitted again; adapters and prefix-sharing requests go where they are served best.
    """

    def __init__(
        self,
        *,
        model_id: str,
        upstream_model: str,
        urls: Sequence[str] = (),
        supervisor: VLLMSupervisor | None = None,
        supervisors: Sequence[VLLMSupervisor] = (),
        api_key: str | None = None,
        timeout_s: float = 600.0,
        balance: BalanceSpec | None = None,
    ) -> None:
        launched = [*supervisors, *([supervisor] if supervisor is not None else [])]
        if bool(urls) == bool(launched):
            raise ValueError("a vLLM engine needs either urls or a supervisor")
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.supervisors = launched
        #: the first launched vLLM (a single-replica model's only one)
        self.supervisor = launched[0] if launched else None
        self._urls = list(urls)
        replicas = [Replica(i, fixed_url=u) for i, u in enumerate(urls)] or [
            Replica(i, supervisor=sup) for i, sup in enumerate(launched)
        ]
        self.balance = balance or BalanceSpec()
        self.fleet = Fleet(replicas, self.balance)
        self._headers = dict(_JSON)
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._parsed: dict[tuple[str, str], URL] = {}
        self._checker: asyncio.Task[None] | None = None
        #: told the ``model`` of a request vLLM answered 404 for (an adapter it lost)
        self.on_model_missing: Callable[[str], None] | None = None
        #: set by adapter serving: load an adapter onto the replica about to serve it
        self.ensure_adapter: Callable[[str, Replica], Awaitable[None]] | None = None
        #: set by adapter serving: a replica answered 404 for an adapter (it lost it)
        self.adapter_missing: Callable[[str, Replica], None] | None = None

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
        if self.supervisors:
            await asyncio.gather(*(s.start() for s in self.supervisors))
        if len(self.fleet.replicas) > 1:
            self._checker = asyncio.create_task(
                check_forever(self.fleet, self._probe, self.balance.health_interval_s),
                name=f"fleet-health-{self.model_id}",
            )

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> EngineHealth:
        replicas = self.fleet.replicas
        if len(replicas) == 1 and self.supervisor is not None and self.supervisor.state != "ready":
            return EngineHealth(False, self.supervisor.state, self.supervisor.detail)
        problems = await asyncio.gather(*(self._probe(r) for r in replicas))
        down = [f"{r.url}: {p}" for r, p in zip(replicas, problems, strict=True) if p]
        extra = {"replicas": self.fleet.snapshot()} if len(replicas) > 1 else {}
        # A fleet is ready while one replica answers; one server must answer itself.
        if len(down) == len(replicas) or (down and len(replicas) == 1):
            return EngineHealth(False, "failed", "; ".join(down), extra)
        return EngineHealth(True, "ready", "; ".join(down), extra)

    async def _probe(self, replica: Replica) -> str | None:
        """The replica's problem, or None when its /health answers 200."""
        if not replica.running:
            return replica.supervisor.state if replica.supervisor is not None else "down"
        try:
            async with self._require_session().get(
                f"{replica.url}/health", timeout=aiohttp.ClientTimeout(total=2.0)
            ) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__

    # -- requests -------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timeout_s):
                replica, resp = await self._open(body)
                try:
                    status, content, headers = resp.status, await resp.read(), resp.headers
                finally:
                    replica.outstanding -= 1
                    resp.release()
        except TimeoutError:
            raise self._timeout() from None
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc) from None
        if status != 200:
            raise upstream_error(self.model_id, status, content, headers)
        return completion_of(self.model_id, content)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        replica, resp = await self._open(body)
        finished = False
        try:
            if resp.status != 200:
                content = await resp.read()
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
            replica.outstanding -= 1
            # A stream read to its end goes back to the pool. One left early (the client went
            # away, or the stream failed) closes its connection, which makes vLLM abort it.
            if finished:
                resp.release()
            else:
                resp.close()

    async def _open(self, body: dict[str, Any]) -> tuple[Replica, aiohttp.ClientResponse]:
        """Send the request to the best replica; the caller reads it and then takes one off the
        replica's ``outstanding``.

        A replica that refuses the connection (the request never reached it) is ejected and
        the next one is tried at once; one that lost the request's adapter loads it again.
        """
        session = self._require_session()
        model = body.get("model")
        adapter = model if isinstance(model, str) and model != self.upstream_model else None
        affinity = AFFINITY.get()
        key, hashed = None, False
        if affinity is not None:
            key, user = affinity
            if self.balance.sticky == "user" and user:
                key, hashed = f"user:{user}", True
        tried: list[Replica] = []
        reloaded = False
        while True:
            replica = self.fleet.pick(adapter=adapter, key=key, hashed=hashed, exclude=tried)
            if not replica.running:
                raise EngineUnavailableError(
                    f"the engine for '{self.model_id}' is {_state(replica)}; retry shortly"
                )
            if adapter is not None and self.ensure_adapter is not None:
                await self.ensure_adapter(adapter, replica)
            replica.outstanding += 1
            try:
                # The current span's traceparent goes upstream when traced (vLLM can join it).
                resp = await session.post(
                    self._url(replica.url, "/v1/chat/completions"),
                    data=orjson.dumps(body),
                    headers=tracing.upstream_headers(self._headers),
                )
            except aiohttp.ClientConnectorError as exc:
                replica.outstanding -= 1
                self.fleet.failed(replica, type(exc).__name__)
                tried.append(replica)
                if len(tried) < len(self.fleet.replicas):
                    continue
                raise self._transport_error(exc) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                replica.outstanding -= 1
                if not isinstance(exc, TimeoutError):
                    self.fleet.failed(replica, type(exc).__name__)
                raise self._transport_error(exc) from None
            if resp.status == 404 and adapter is not None:
                if self.adapter_missing is not None and not reloaded:
                    # vLLM restarted (or another gateway evicted it): load it again, once.
                    resp.release()
                    replica.outstanding -= 1
                    self.adapter_missing(adapter, replica)
                    reloaded = True
                    continue
                if self.on_model_missing is not None:
                    self.on_model_missing(adapter)
            if resp.status in (502, 503) and len(self.fleet.replicas) > 1:
                self.fleet.failed(replica, f"HTTP {resp.status}")
            elif resp.status < 500:
                self.fleet.succeeded(replica)
            return replica, resp

    async def _post(
        self, path: str, body: dict[str, Any], url: str
    ) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._require_session()
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(
                    self._url(url, path),
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
        """Changes when a launched vLLM was restarted (and so lost runtime-loaded adapters)."""
        return sum(s.restarts for s in self.supervisors)

    async def load_lora(self, name: str, path: str, replica: Replica | None = None) -> None:
        """Load a LoRA into ``replica`` (default: every replica); one that has it counts."""
        for target in [replica] if replica is not None else self.fleet.replicas:
            body = {"lora_name": name, "lora_path": path}
            status, content, _ = await self._post("/v1/load_lora_adapter", body, target.url)
            # vLLM answers 400 for a name it has (e.g. a gateway restarted beside it).
            if status == 200 or (status == 400 and name in await self._served_names(target.url)):
                target.adapters.add(name)
                continue
            raise lora_error(self.model_id, "load", name, status, content)

    async def unload_lora(self, name: str, replica: Replica | None = None) -> None:
        """Unload a LoRA from ``replica`` (default: every replica); one that lacks it counts."""
        for target in [replica] if replica is not None else self.fleet.replicas:
            status, content, _ = await self._post(
                "/v1/unload_lora_adapter", {"lora_name": name}, target.url
            )
            target.adapters.discard(name)
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


def _state(replica: Replica) -> str:
    return replica.supervisor.state if replica.supervisor is not None else "down"


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
