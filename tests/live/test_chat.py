"""The OpenAI API of the real gateway on the real vLLM, through the official openai client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow

ASK: list[Any] = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_non_streaming_completion(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=24, temperature=0
    )
    assert result.model == "smollm2"
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content
    assert result.usage is not None
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


def test_stream_joins_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=32, temperature=0
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_raw_stream_ends_with_done(gateway_server: RunningGateway) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{gateway_server.url}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    assert text.rstrip().endswith("data: [DONE]")


def test_n_two_choices(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=8, n=2, temperature=1, seed=1
    )
    assert [c.index for c in result.choices] == [0, 1]


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=3)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="smollm2", messages=ASK, max_completion_tokens=2)
    assert result.usage is not None and result.usage.completion_tokens == 2


def test_stop_sequence_cuts_the_text(client: openai.OpenAI) -> None:
    free = (
        client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=40, temperature=0)
        .choices[0]
        .message.content
    )
    assert free and len(free.split()) > 3
    stop_word = free.split()[2]
    cut = client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=40, temperature=0, stop=[stop_word]
    ).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == free[: free.index(stop_word)]


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample() -> str | None:
        return (
            client.chat.completions.create(
                model="smollm2", messages=ASK, max_tokens=16, temperature=1.0, seed=1234
            )
            .choices[0]
            .message.content
        )

    assert sample() == sample()


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    result = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
        max_tokens=64,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    data = json.loads(result.choices[0].message.content or "")
    jsonschema.validate(data, schema)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give a JSON object with a key 'colour'."}],
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(result.choices[0].message.content or ""), dict)


def test_vllm_parameters_pass_through(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 5},
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 4
    assert all(len(token.top_logprobs) == 2 for token in logprobs.content)


def test_text_part_content(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello."}]},
        ],
        max_tokens=8,
    )
    assert result.choices[0].message.content


def test_models_endpoints(client: openai.OpenAI) -> None:
    # Every name a client may call: base models, adapters (tests/live/test_adapters.py), routes.
    kinds = {m.id: m.model_dump()["switchboard"]["kind"] for m in client.models.list().data}
    assert [name for name, kind in kinds.items() if kind == "model"] == ["smollm2"]
    assert kinds["medqa"] == "route" and kinds["mmlu-med-demo"] == "adapter"
    assert client.models.retrieve("medqa").id == "medqa"
    assert client.models.retrieve("smollm2").id == "smollm2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_health_and_ready(gateway_server: RunningGateway) -> None:
    assert httpx.get(f"{gateway_server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway_server.url}/ready")
    assert ready.status_code == 200
    assert ready.json()["engines"]["smollm2"] == {"ready": True, "state": "ready"}


def test_vllm_listens_on_loopback_only(gateway_server: RunningGateway) -> None:
    assert gateway_server.vllm_url.startswith("http://127.0.0.1:")


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"n": 9}, "n"),
        ({"max_tokens": 4096}, "max_tokens"),
        ({"top_p": "high"}, "top_p"),
    ],
)
def test_invalid_parameters(client: openai.OpenAI, params: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": "smollm2", "messages": ASK, **params}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.param == param


def test_malformed_json(gateway_server: RunningGateway) -> None:
    resp = httpx.post(
        f"{gateway_server.url}/v1/chat/completions",
        content=b'{"model": "smollm2", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_engine_rejection_is_a_400_not_a_5xx(client: openai.OpenAI) -> None:
    # Within the gateway's body and max_tokens limits, but the prompt alone is longer than
    # vLLM's 4096-token context (vLLM 0.32 clamps max_tokens rather than refusing it).
    long_prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=long_prompt, max_tokens=16)
    assert info.value.code == "upstream_rejected"
    assert "context" in info.value.message or "tokens" in info.value.message
    assert "Traceback" not in str(info.value.body)
