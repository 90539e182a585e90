"""The other ways to reach a model, through the gateway API: existing vLLM URLs and LiteLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.settings import Settings

pytestmark = pytest.mark.slow


async def _client_for(config: str) -> AsyncIterator[openai.AsyncOpenAI]:
    app = create_app(parse_config(config, "test.yaml"), Settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as raw:
            yield openai.AsyncOpenAI(
                base_url="http://gw/v1", api_key="unused", http_client=raw, max_retries=0
            )


@pytest.fixture
async def url_client(vllm_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    config = f"""
models:
  fleet: {{engine: vllm, urls: ["{vllm_url}", "{vllm_url}/"], upstream_model: smollm2}}
"""
    async for client in _client_for(config):
        yield client


@pytest.fixture
async def litellm_client(vllm_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    config = f"""
models:
  hosted: {{engine: litellm, model: hosted_vllm/smollm2, api_base: "{vllm_url}/v1"}}
"""
    async for client in _client_for(config):
        yield client


async def test_existing_vllm_urls(url_client: openai.AsyncOpenAI) -> None:
    result = await url_client.chat.completions.create(
        model="fleet", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    # The response names what served it: the upstream's model.
    assert result.model == "smollm2"
    assert result.choices[0].message.content


async def test_litellm_engine_through_the_api(litellm_client: openai.AsyncOpenAI) -> None:
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a fruit."}]
    whole = await litellm_client.chat.completions.create(
        model="hosted",
        messages=ask,
        max_tokens=12,
        temperature=0,
    )
    assert whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    stream = await litellm_client.chat.completions.create(
        model="hosted",
        messages=ask,
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    joined = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert joined == whole.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        await litellm_client.chat.completions.create(
            model="hosted", messages=[{"role": "user", "content": "w " * 6000}], max_tokens=16
        )
