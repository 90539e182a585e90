"""The LiteLLM engine on its own, against the real vLLM server (LiteLLM's 'hosted_vllm/').

Tests that need no server (a closed port, a missing key variable) are not marked slow: they only
import LiteLLM.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import orjson
import pytest

from gateway.engines.base import Engine
from gateway.engines.hosted import LiteLLMEngine
from gateway.errors import (
    EngineError,
    EngineUnavailableError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)

# LiteLLM silences this pydantic warning with a process-wide filter it installs at import, but
# pytest restores the filters after each test, so whichever test first builds LiteLLM's
# response models after the importing test trips 'filterwarnings = error' with it.
pytestmark = pytest.mark.filterwarnings("ignore:.*`ReadOnly` qualifier:UserWarning")

ASK: list[dict[str, str]] = [{"role": "user", "content": "Name a fruit."}]


def _engine(api_base: str, **kwargs: Any) -> LiteLLMEngine:
    options: dict[str, Any] = {"api_key_env": None, "timeout_s": 60.0, **kwargs}
    return LiteLLMEngine(
        model_id="hosted", litellm_model="hosted_vllm/smollm2", api_base=api_base, **options
    )


@pytest.fixture
async def engine(vllm_url: str) -> AsyncIterator[LiteLLMEngine]:
    engine = _engine(f"{vllm_url}/v1")
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def _events(raw: list[bytes]) -> list[bytes]:
    """The payloads of the SSE events, each checked for the 'data: ...\\n\\n' framing."""
    payloads = []
    for event in raw:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
        payloads.append(event[len(b"data: ") : -2])
    return payloads


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again when the socket is: nothing listens there


@pytest.mark.slow
async def test_satisfies_the_engine_protocol_and_health(vllm_url: str) -> None:
    engine = _engine(f"{vllm_url}/v1")
    assert isinstance(engine, Engine)
    assert engine.upstream_model == "hosted_vllm/smollm2"
    assert (await engine.health()).state == "stopped"
    await engine.start()
    try:
        health = await engine.health()
        assert health.ready and health.state == "ready"
    finally:
        await engine.stop()
    assert not (await engine.health()).ready
    await engine.stop()  # safe twice


@pytest.mark.slow
async def test_chat(engine: LiteLLMEngine) -> None:
    result = await engine.chat({"model": "smollm2", "messages": ASK, "max_tokens": 12})
    orjson.dumps(result)  # what the API does with it
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"]
    assert result["usage"]["prompt_tokens"] > 0
    assert result["usage"]["completion_tokens"] > 0


@pytest.mark.slow
async def test_stream_matches_chat_and_reports_usage(engine: LiteLLMEngine) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 16, "temperature": 0}
    whole = await engine.chat(body)
    raw = [
        event
        async for event in engine.chat_stream(
            {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
    ]
    payloads = _events(raw)
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert joined == whole["choices"][0]["message"]["content"]
    # The usage chunk comes last, with no choices, as OpenAI sends it.
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert usage_chunk["usage"]["prompt_tokens"] > 0


@pytest.mark.slow
async def test_stream_without_include_usage_has_no_usage_chunk(engine: LiteLLMEngine) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 4, "stream": True}
    payloads = _events([event async for event in engine.chat_stream(body)])
    assert payloads[-1] == b"[DONE]"
    assert all(orjson.loads(p).get("usage") is None for p in payloads[:-1])


@pytest.mark.slow
async def test_unknown_and_unsupported_params_pass_through(engine: LiteLLMEngine) -> None:
    # 'min_tokens' and 'top_k' are vLLM's, unknown to OpenAI; LiteLLM would drop 'user' for a
    # model name it does not know. All must reach vLLM unchanged and not fail the call.
    short = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Say only the word yes."}],
        "max_tokens": 40,
        "temperature": 0,
        "user": "someone",
    }
    natural = await engine.chat(short)
    assert natural["usage"]["completion_tokens"] < 20  # "Yes." and the end token
    padded = await engine.chat({**short, "min_tokens": 20, "top_k": 1})
    assert padded["usage"]["completion_tokens"] >= 20  # vLLM saw min_tokens
    with pytest.raises(UpstreamRejectedError, match="top_k"):
        await engine.chat({**short, "top_k": -5})  # and top_k


@pytest.mark.slow
async def test_bad_request_is_upstream_rejected(engine: LiteLLMEngine) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 100_000}
    with pytest.raises(UpstreamRejectedError, match="max_tokens") as caught:
        await engine.chat(body)
    assert caught.value.status_code == 400
    assert "litellm" not in caught.value.message.lower()
    with pytest.raises(UpstreamRejectedError, match="max_tokens"):
        async for _ in engine.chat_stream({**body, "stream": True}):
            pass


@pytest.mark.slow
async def test_closing_a_stream_early_is_clean(engine: LiteLLMEngine) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 200, "stream": True}
    stream = engine.chat_stream(body)
    assert isinstance(stream, AsyncGenerator)  # so the API can close it
    first = await anext(stream)
    assert first.startswith(b"data: {")
    await stream.aclose()  # the client went away
    result = await engine.chat({"model": "smollm2", "messages": ASK, "max_tokens": 4})
    assert result["choices"][0]["message"]["content"]


async def test_closed_port_is_unavailable() -> None:
    engine = _engine(f"http://127.0.0.1:{_closed_port()}/v1", timeout_s=10.0)
    await engine.start()
    try:
        body = {"model": "smollm2", "messages": ASK, "max_tokens": 4}
        with pytest.raises(EngineUnavailableError, match="unreachable") as caught:
            await engine.chat(body)
        assert caught.value.status_code == 503
        assert caught.value.headers.get("Retry-After")
        with pytest.raises(EngineUnavailableError):
            async for _ in engine.chat_stream({**body, "stream": True}):
                pass
    finally:
        await engine.stop()


async def test_missing_api_key_env_raises_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_TEST_NO_SUCH_KEY", raising=False)
    engine = _engine("http://127.0.0.1:9/v1", api_key_env="SWITCHBOARD_TEST_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="SWITCHBOARD_TEST_NO_SUCH_KEY"):
        await engine.start()
    assert not (await engine.health()).ready


async def test_calls_before_start_are_unavailable() -> None:
    engine = _engine("http://127.0.0.1:9/v1")
    with pytest.raises(EngineUnavailableError, match="not started"):
        await engine.chat({"model": "smollm2", "messages": ASK})


# -- against a stub upstream: the error statuses a real vLLM cannot be made to return -------------

KEY = "sk-test-secret-123"


class _Stub(BaseHTTPRequestHandler):
    """Answers a chat completion, or the status and headers the body's 'stub' field asks for.

    The error body echoes the key, as some providers do, to check that it never reaches a
    client.
    """

    seen: ClassVar[list[tuple[dict[str, str], dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.seen.append((headers, body))
        stub = body.get("stub") or {}
        status = int(stub.get("status", 200))
        if status == 200:
            payload: dict[str, Any] = {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 1,
                "model": "stub",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        else:
            payload = {"error": {"message": f"no ({KEY})", "type": "x", "code": status}}
        out = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (stub.get("headers") or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def stub_engine(
    stub_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiteLLMEngine]:
    monkeypatch.setenv("SWITCHBOARD_TEST_KEY", KEY)
    engine = _engine(stub_url, api_key_env="SWITCHBOARD_TEST_KEY", timeout_s=10.0)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def _stubbed(status: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"messages": ASK, "stub": {"status": status, "headers": headers or {}}}


async def test_body_keys_never_steer_litellm(stub_engine: LiteLLMEngine) -> None:
    # LiteLLM reads api_base, mock_response, extra_headers, ... from its **kwargs: from a
    # client body they must travel upstream as plain data, and the key is the gateway's.
    body = {
        "model": "smollm2",
        "messages": ASK,
        "api_base": "http://attacker.invalid/v1",
        "api_key": "client-key",
        "mock_response": "not from upstream",
        "extra_headers": {"x-injected": "1"},
        "user": "someone",
        "top_k": 3,
    }
    result = await stub_engine.chat(body)
    assert result["choices"][0]["message"]["content"] == "ok"
    headers, sent = _Stub.seen[-1]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert "x-injected" not in headers
    assert sent["model"] == "smollm2"  # from litellm_model, not the body
    for key in ("api_base", "api_key", "mock_response", "extra_headers", "user", "top_k"):
        assert sent[key] == body[key]


async def test_rate_limit_keeps_retry_after(stub_engine: LiteLLMEngine) -> None:
    with pytest.raises(UpstreamRateLimitedError) as caught:
        await stub_engine.chat(_stubbed(429, {"retry-after": "7"}))
    assert caught.value.status_code == 429
    assert caught.value.headers == {"Retry-After": "7"}
    assert KEY not in caught.value.message


@pytest.mark.parametrize("status", [401, 403])
async def test_credential_errors_are_the_gateways(stub_engine: LiteLLMEngine, status: int) -> None:
    with pytest.raises(EngineError, match="credentials") as caught:
        await stub_engine.chat(_stubbed(status))
    assert caught.value.status_code == 502
    assert not caught.value.retryable
    assert KEY not in caught.value.message


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, UpstreamRejectedError, 400),
        (503, EngineUnavailableError, 503),
        (500, EngineError, 502),
    ],
)
async def test_upstream_statuses(
    stub_engine: LiteLLMEngine, status: int, error: type[Exception], code: int
) -> None:
    with pytest.raises(error) as caught:
        await stub_engine.chat(_stubbed(status))
    assert getattr(caught.value, "status_code", None) == code
    message = str(caught.value)
    assert KEY not in message and "litellm" not in message.lower()
    assert "Traceback" not in message


async def test_unsupported_param_for_a_non_openai_provider_is_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # LiteLLM translates for Anthropic and refuses what it cannot map, before any network call.
    monkeypatch.setenv("SWITCHBOARD_TEST_KEY", KEY)
    engine = LiteLLMEngine(
        model_id="claude",
        litellm_model="anthropic/claude-3-5-haiku-latest",
        api_base=f"http://127.0.0.1:{_closed_port()}",
        api_key_env="SWITCHBOARD_TEST_KEY",
        timeout_s=10.0,
    )
    await engine.start()
    try:
        with pytest.raises(UpstreamRejectedError, match="seed") as caught:
            await engine.chat({"model": "x", "messages": ASK, "max_tokens": 4, "seed": 1})
        assert "drop_params" not in caught.value.message
    finally:
        await engine.stop()


async def test_unroutable_model_string_fails_at_start() -> None:
    engine = LiteLLMEngine(
        model_id="bad", litellm_model="nonsense/foo", api_base=None, timeout_s=10.0
    )
    with pytest.raises(ValueError, match="nonsense/foo"):
        await engine.start()
    assert (await engine.health()).state == "failed"
