"""Tool calling through the gateway, in process: what passes to the engine, what is refused.

The engine seam records the bodies it gets and answers as vLLM does with its ``hermes`` parser
(``tool_calls`` in the message, ``delta.tool_calls`` in a stream). The real vLLM runs the same
requests in tests/live/test_tools_live.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from gateway.config.schema import LaunchSpec
from gateway.engines.base import EngineHealth
from gateway.engines.factory import CHATML_TOOLS_TEMPLATE, tool_args, tool_parser_for
from gateway.engines.vllm import upstream_error
from tests.support.apps import InProcessGateway

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
QUESTION: list[Any] = [{"role": "user", "content": "Which is a gas?\n\nA. Iron\nB. Neon"}]
CALL: dict[str, Any] = {
    "id": "chatcmpl-tool-1",
    "type": "function",
    "function": {"name": "get_weather"},
}
ARGS = '{"city": "Paris"}'
ROUND_TRIP: list[Any] = [
    *ASK,
    {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {
        "name": "get_weather", "arguments": ARGS}}]},
    {"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": "sunny, 22 C"},
]  # fmt: skip
CONFIG = """
limits: {max_body_bytes: 65536, max_n: 4, max_tokens: 512}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  assistant:
    variants:
      plain: {target: fake, weight: 1}
  voting:
    variants:
      cot: {target: fake, pipeline: cot, weight: 1}
"""


class ToolEngine:
    """Calls ``get_weather`` whenever the request offers tools, as vLLM's parser reports it."""

    def __init__(self) -> None:
        self.model_id = "fake"
        self.upstream_model = "upstream-fake"
        self.bodies: list[dict[str, Any]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> EngineHealth:
        return EngineHealth(True, "ready")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        calls = bool(body.get("tools")) and body.get("tool_choice") != "none"
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else "Sunny."}
        if calls:
            message["tool_calls"] = [{**CALL, "function": {**CALL["function"], "arguments": ARGS}}]
        return {
            "id": "chatcmpl-t",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        }

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.bodies.append(body)
        head = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 0, "model": "u"}
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": ""},
            {"tool_calls": [{"index": 0, **CALL, "function": {"name": "get_weather"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ARGS[:9]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ARGS[9:]}}]},
        ]
        for delta in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            yield b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
        end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
        yield b"data: " + orjson.dumps({**head, "choices": [end]}) + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.mark.parametrize("model", ["fake", "assistant"])
async def test_tools_and_tool_results_reach_the_engine_as_sent(
    gateway: InProcessGateway, model: str
) -> None:
    engine = ToolEngine()
    async with gateway({"fake": engine}, CONFIG) as (client, _):
        first = await client.chat.completions.create(
            model=model, messages=ASK, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False
        )
        calls = first.choices[0].message.tool_calls
        assert calls is not None and calls[0].type == "function"
        assert calls[0].function.name == "get_weather"
        assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
        assert first.choices[0].finish_reason == "tool_calls"
        await client.chat.completions.create(model=model, messages=ROUND_TRIP, tools=TOOLS)
    sent = engine.bodies[0]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"
    assert sent["parallel_tool_calls"] is False
    assert engine.bodies[1]["messages"] == ROUND_TRIP


async def test_named_tool_choice_streams_delta_tool_calls(gateway: InProcessGateway) -> None:
    engine = ToolEngine()
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    async with gateway({"fake": engine}, CONFIG) as (client, _):
        stream = await client.chat.completions.create(
            model="assistant", messages=ASK, tools=TOOLS, tool_choice=choice, stream=True
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [call for d in deltas for call in d.tool_calls or []]
    assert pieces[0].function is not None and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert engine.bodies[0]["tool_choice"] == choice


async def test_a_voting_pipeline_refuses_tools_naming_itself(gateway: InProcessGateway) -> None:
    engine = ToolEngine()
    async with gateway({"fake": engine}, CONFIG) as (client, _):
        for model, extra in (("voting", {}), ("fake", {"switchboard": {"pipeline": "medprompt"}})):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(
                    model=model, messages=ASK, tools=TOOLS, extra_body=extra
                )
            error = refused.value.body
            assert isinstance(error, dict) and error["param"] == "tools"
            assert error["code"] == "tools_not_supported"
            assert f"'{(extra and 'medprompt') or 'cot'}'" in error["message"]
        # tool_choice 'none': the pipeline votes, and the tools never reach its members.
        await client.chat.completions.create(
            model="voting", messages=QUESTION, tools=TOOLS, tool_choice="none"
        )
    assert engine.bodies and all("tools" not in body for body in engine.bodies)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
        (
            {"messages": [*ASK, {"role": "user", "content": "x", "tool_calls": []}]},
            "messages[1].tool_calls",
        ),
    ],
)
async def test_malformed_tool_requests_are_400s_naming_the_field(
    gateway: InProcessGateway, change: dict[str, Any], param: str
) -> None:
    body = {"model": "fake", "messages": ASK, "tools": TOOLS, **change}
    async with gateway({"fake": ToolEngine()}, CONFIG) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param


def test_an_engine_without_a_parser_is_a_400_in_the_clients_terms() -> None:
    # vLLM's own answer when it was started without --tool-call-parser
    body = {
        "error": {
            "message": '"auto" tool choice requires --enable-auto-tool-choice and '
            "--tool-call-parser to be set",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    error = upstream_error("smollm2", 400, orjson.dumps(body), {})
    assert error.status_code == 400 and error.param == "tool_choice"
    assert error.code == "tool_calling_unavailable"
    assert "--" not in error.message
    assert "models.smollm2.launch.tool_parser" in error.message


def test_launch_flags_for_tool_calling() -> None:
    packaged = LaunchSpec(model="packaged:smollm2-135m-instruct")
    assert tool_args(packaged, None) == [
        "--chat-template", str(CHATML_TOOLS_TEMPLATE),
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]  # fmt: skip
    assert CHATML_TOOLS_TEMPLATE.is_file()
    assert tool_parser_for(LaunchSpec(model="meta-llama/Llama-3.1-8B-Instruct")) == "llama3_json"
    assert tool_parser_for(LaunchSpec(model="mistralai/Mistral-7B-Instruct-v0.3")) == "mistral"
    assert tool_parser_for(LaunchSpec(model="Qwen/Qwen2.5-7B-Instruct")) == "hermes"
    assert tool_parser_for(LaunchSpec(model="org/unknown-model")) is None
    assert tool_args(LaunchSpec(model="org/unknown-model"), None) == []
    off = LaunchSpec(model="packaged:smollm2-135m-instruct", tool_parser=None)
    assert "--tool-call-parser" not in tool_args(off, None)
    with pytest.raises(ValueError, match=r"launch\.tool_parser"):
        LaunchSpec(model="x/y", args=["--tool-call-parser=hermes"])
