"""The vLLM engine's mapping of upstream answers and transport faults (fault injection).

The engine talks over real loopback sockets to a scripted server (tests/handler_server.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from gateway.engines.vllm import VLLMEngine
from gateway.errors import (
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from tests.support.handler_server import serving

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def engine_with(
    handler: Callable[[httpx.Request], httpx.Response],
) -> AsyncIterator[VLLMEngine]:
    """A started engine at two URLs, both served by ``handler``."""
    async with serving(handler) as first, serving(handler) as second:
        engine = VLLMEngine(model_id="m", upstream_model="m", urls=[first, second], timeout_s=5)
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            400,
            b'{"error": {"message": "too long", "type": "BadRequestError"}}',
            UpstreamRejectedError,
            "too long",
        ),
        (
            400,
            b'{"object": "error", "message": "flat form", "code": 400}',
            UpstreamRejectedError,
            "flat form",
        ),
        (422, b"not json", UpstreamRejectedError, "not json"),
        (404, b'{"error": {"message": "model x missing"}}', EngineError, "does not serve"),
        (429, b"{}", UpstreamRateLimitedError, "rate limited"),
        (500, b"", EngineError, "HTTP 500"),
        (503, b"{}", EngineUnavailableError, "unavailable"),
        (504, b"{}", EngineTimeoutError, "timed out"),
    ],
)
async def test_upstream_status_maps_to_error_tree(
    status: int, body: bytes, error: type[GatewayError], message: str
) -> None:
    async with engine_with(lambda _: httpx.Response(status, content=body)) as engine:
        with pytest.raises(error) as info:
            await engine.chat(dict(BODY))
        assert message in info.value.message
        with pytest.raises(error):
            await anext(engine.chat_stream(dict(BODY)))


async def test_connection_errors_are_503_and_urls_rotate() -> None:
    seen: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}:{request.url.port}")
        raise httpx.ConnectError("refused", request=request)

    async with engine_with(refuse) as engine:
        for _ in range(2):
            with pytest.raises(EngineUnavailableError) as info:
                await engine.chat(dict(BODY))
            assert info.value.headers["Retry-After"]
    assert len(set(seen)) == 2  # one request to each URL in turn


async def test_stream_cut_midway_raises_engine_error_after_first_chunk() -> None:
    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield b'data: {"choices": []}\n\n'
            raise httpx.RemoteProtocolError("peer closed connection")

    sse = {"content-type": "text/event-stream"}
    async with engine_with(lambda _: httpx.Response(200, headers=sse, stream=Cut())) as engine:
        stream = engine.chat_stream(dict(BODY))
        assert (await anext(stream)).startswith(b"data: ")
        with pytest.raises(EngineUnavailableError):
            await anext(stream)


async def test_not_started_engine_is_unavailable() -> None:
    engine = VLLMEngine(model_id="m", upstream_model="m", urls=["http://127.0.0.1:9"])
    with pytest.raises(EngineUnavailableError):
        await engine.chat(dict(BODY))


@pytest.mark.parametrize(
    "content",
    [b"<html>oops</html>", b'["a list"]', b'{"choices": "x"}', b'{"choices": [], "usage": "lots"}'],
    ids=["not-json", "not-an-object", "choices-not-a-list", "usage-not-an-object"],
)
async def test_a_200_that_is_no_completion_is_an_engine_error(content: bytes) -> None:
    async with engine_with(lambda _: httpx.Response(200, content=content)) as engine:
        with pytest.raises(EngineError) as info:
            await engine.chat(dict(BODY))
    assert info.value.status_code == 502 and info.value.code == "upstream_error"


async def test_a_non_sse_200_to_a_stream_is_an_engine_error() -> None:
    async with engine_with(lambda _: httpx.Response(200, json={"id": "x"})) as engine:
        with pytest.raises(EngineError, match="not an event stream"):
            await anext(engine.chat_stream(dict(BODY)))


async def test_the_engines_retry_after_on_503_is_passed_on() -> None:
    answer = httpx.Response(503, headers={"retry-after": "7"}, content=b"{}")
    async with engine_with(lambda _: answer) as engine:
        with pytest.raises(EngineUnavailableError) as info:
            await engine.chat(dict(BODY))
    assert info.value.headers["Retry-After"] == "7"
