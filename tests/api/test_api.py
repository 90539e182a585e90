"""The API's own logic, through the official openai client, with a scripted engine."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from gateway.errors import EngineError, EngineUnavailableError, UpstreamRejectedError
from tests.support.fakes import FakeEngine

MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]


async def test_chat_passes_body_through_with_the_upstream_model_name(gateway: Any) -> None:
    engine = FakeEngine(text="hi back")
    async with gateway({"fake": engine}) as (client, _):
        result = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            temperature=0.5,
            extra_body={"top_k": 5, "logit_bias": {"42": -1.0}},
        )
    assert result.choices[0].message.content == "hi back"
    assert result.model == "upstream-fake"
    sent = engine.bodies[0]
    assert sent["model"] == "upstream-fake"
    assert sent["top_k"] == 5 and sent["logit_bias"] == {"42": -1.0}
    assert sent["temperature"] == 0.5


async def test_stream_relays_chunks_and_done(gateway: Any) -> None:
    engine = FakeEngine(text="one two three")
    async with gateway({"fake": engine}) as (client, raw):
        stream = await client.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream]
        body = (
            await raw.post(
                "/v1/chat/completions", json={"model": "fake", "messages": MESSAGES, "stream": True}
            )
        ).text
    assert pieces == ["one", "two", "three"]
    assert body.rstrip().endswith("data: [DONE]")
    assert engine.stream_closed


async def test_stream_failing_midway_ends_with_error_event_and_no_done(gateway: Any) -> None:
    engine = FakeEngine(text="a b c", fail_with=EngineError("engine died"), fail_stream_after=1)
    async with gateway({"fake": engine}) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "fake", "messages": MESSAGES, "stream": True}
        )
    assert resp.status_code == 200
    events = [e for e in resp.text.split("\n\n") if e]
    assert "[DONE]" not in resp.text
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert last["error"]["message"] == "engine died"
    assert last["error"]["type"] == "api_error"
    assert engine.stream_closed


async def test_stream_failing_before_first_byte_is_an_http_error(gateway: Any) -> None:
    engine = FakeEngine(fail_with=EngineUnavailableError("down", retry_after_s=7))
    async with gateway({"fake": engine}) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "fake", "messages": MESSAGES, "stream": True}
        )
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["code"] == "engine_unavailable"


async def test_unknown_model_is_404_model_not_found(gateway: Any) -> None:
    async with gateway() as (client, _):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": 257}, "max_tokens"),
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"stream": "yes"}, "stream"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_invalid_parameters_are_400_naming_the_param(
    gateway: Any, extra: dict[str, Any], param: str
) -> None:
    engine = FakeEngine()
    body = {"model": "fake", "messages": MESSAGES, **extra}
    async with gateway({"fake": engine}) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split("[")[0] in error["message"]
    assert engine.bodies == []  # refused before reaching the engine


@pytest.mark.parametrize("raw_body", [b"{not json", b"[1, 2]", b"", b'"text"'])
async def test_malformed_json_is_400(gateway: Any, raw_body: bytes) -> None:
    async with gateway() as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", content=raw_body, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_text_parts_are_accepted(gateway: Any) -> None:
    engine = FakeEngine()
    content = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]
    async with gateway({"fake": engine}) as (client, _):
        await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": content}]
        )
    assert engine.bodies[0]["messages"][0]["content"] == content


CHAT_SMALL = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def test_oversize_body_is_413_with_and_without_content_length(gateway: Any) -> None:
    big = {"model": "fake", "messages": [{"role": "user", "content": "x" * 5000}]}
    payload = orjson.dumps(big)

    async def chunked() -> Any:
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    json = {"content-type": "application/json"}
    async with gateway() as (_, raw):
        sized = await raw.post("/v1/chat/completions", content=payload, headers=json)
        streamed = await raw.post("/v1/chat/completions", content=chunked(), headers=json)
        untyped = await raw.post("/v1/chat/completions", content=orjson.dumps(CHAT_SMALL))
    for resp in (sized, streamed):
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
        assert "x-switchboard-inference-id" in resp.headers  # an event, like every request
    assert untyped.status_code == 415  # a body not declared JSON (a web page's text POST)
    assert untyped.json()["error"]["code"] == "unsupported_media_type"


async def test_engine_errors_keep_their_status(gateway: Any) -> None:
    cases = [
        (UpstreamRejectedError("context too long"), 400, "upstream_rejected"),
        (EngineUnavailableError("restarting"), 503, "engine_unavailable"),
        (EngineError("boom"), 502, "upstream_error"),
    ]
    for error, status, code in cases:
        async with gateway({"fake": FakeEngine(fail_with=error)}) as (_, raw):
            resp = await raw.post(
                "/v1/chat/completions", json={"model": "fake", "messages": MESSAGES}
            )
        assert resp.status_code == status
        assert resp.json()["error"]["code"] == code
        assert "Traceback" not in resp.text


async def test_models_list_and_retrieve(gateway: Any) -> None:
    engines = {"fake": FakeEngine(), "org/other": FakeEngine("org/other")}
    async with gateway(engines) as (client, _):
        listed = await client.models.list()
        one = await client.models.retrieve("org/other")
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("missing")
    assert sorted(m.id for m in listed.data) == ["fake", "org/other"]
    assert one.id == "org/other"
    assert info.value.code == "model_not_found"


async def test_health_and_ready(gateway: Any) -> None:
    async with gateway({"fake": FakeEngine(ready=False)}) as (_, raw):
        health = await raw.get("/health")
        ready = await raw.get("/ready")
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.headers["retry-after"]
    assert ready.json()["engines"]["fake"]["state"] == "restarting"


async def test_unknown_path_and_method_use_openai_error_shape(gateway: Any) -> None:
    async with gateway() as (_, raw):
        missing = await raw.get("/v1/nothing")
        wrong = await raw.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 405 and "error" in wrong.json()
