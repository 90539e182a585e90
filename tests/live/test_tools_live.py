"""Tool calling on the real gateway and vLLM (hermes parser, the packaged ChatML template).

The 135M model rarely chooses a tool by itself, so the calls that must happen are forced: a
named ``tool_choice`` is guided decoding of that function's arguments, and ``required`` lets
the model pick among the tools under the same constraint (it needs room: about 35 tokens for
one call here, so 256). ``auto`` is checked for a valid answer, whatever the model chose.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from gateway.routing.assignment import PIN_HEADER
from tests.conftest import RunningGateway
from tests.support.openai_schema import assert_valid

pytestmark = pytest.mark.slow

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city's name"}},
                "required": ["city"],
            },
        },
    }
]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
ROOM = 256


def _arguments(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("model", ["smollm2", "mmlu-med-demo"])
def test_a_named_tool_choice_forces_the_call(client: openai.OpenAI, model: str) -> None:
    result = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=ROOM, temperature=0
    )
    calls = result.choices[0].message.tool_calls
    assert calls and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    _arguments(calls[0].function.arguments)
    assert_valid("CreateChatCompletionResponse", result.model_dump(exclude_unset=True))


def test_a_named_tool_choice_streams_delta_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=ROOM,
        temperature=0,
        stream=True,
    )
    pieces = [
        call
        for chunk in stream
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    assert pieces and pieces[0].function is not None
    assert pieces[0].function.name == "get_weather" and pieces[0].id
    _arguments("".join(p.function.arguments or "" for p in pieces if p.function))


def test_required_makes_the_model_call_a_tool(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=ROOM,
        temperature=0,  # sampled, the guided JSON can wander past max_tokens: no call parses
    )
    calls = result.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert result.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_auto_and_none_answer(client: openai.OpenAI, choice: Any) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=24,
        temperature=0,
    )
    message = result.choices[0].message
    assert message.content or message.tool_calls
    if choice == "none":
        assert not message.tool_calls


def test_a_tool_result_round_trips(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=ROOM,
        temperature=0,  # as in test_required_makes_the_model_call_a_tool
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 22 C"},
    ]
    final = client.chat.completions.create(
        model="smollm2", messages=history, tools=TOOLS, max_tokens=24, temperature=0
    )
    assert final.choices[0].message.content


def test_a_voting_variant_refuses_tools_and_a_plain_one_calls_them(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError, match="'medprompt'") as refused:
        client.chat.completions.create(
            model="medqa", messages=ASK, tools=TOOLS, extra_headers={PIN_HEADER: "prompted"}
        )
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "tools"
    result = client.chat.completions.create(
        model="medqa",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=ROOM,
        extra_headers={PIN_HEADER: "tuned"},
    )
    assert (result.choices[0].message.tool_calls or [])[0].function.name == "get_weather"  # type: ignore[union-attr]


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}, 22 C"


def test_langchain_bind_tools_round_trips_through_a_route(gateway_server: RunningGateway) -> None:
    llm = ChatOpenAI(
        model="medqa",
        base_url=f"{gateway_server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        default_headers={PIN_HEADER: "tuned"},
        max_completion_tokens=ROOM,
        temperature=0,
        max_retries=0,
    )
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    messages: list[BaseMessage] = [HumanMessage("What is the weather in Paris?")]
    ai = bound.invoke(messages)
    assert isinstance(ai, AIMessage) and ai.tool_calls
    call = ai.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"], dict)
    assert call["id"]
    # The 135M model's arguments are JSON of the function's shape, but not always of its types
    # (guided decoding seen writing {"city": {"type": "string", ...}}): the tool runs on a city.
    result = ToolMessage(get_weather.invoke({"city": "Paris"}), tool_call_id=call["id"])
    final = llm.bind_tools([get_weather]).invoke([*messages, ai, result])
    assert isinstance(final, AIMessage)
    assert final.content or final.tool_calls
