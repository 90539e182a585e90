"""A route on the real vLLM: users split between variants, feedback, the report."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.engines.supervisor import free_port
from gateway.settings import Settings
from gateway.state import GatewayState

pytestmark = pytest.mark.slow


@pytest.fixture
async def gateway_on_vllm(
    vllm_url: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayState]]:
    config = f"""
models:
  base: {{engine: vllm, urls: ["{vllm_url}"], upstream_model: smollm2,
          pricing: {{prompt_per_1m: 0.1, completion_per_1m: 0.4}}}}
  dead: {{engine: vllm, urls: ["http://127.0.0.1:{free_port()}"], upstream_model: smollm2}}
routes:
  resilient:
    allow_pin: true
    variants:
      down: {{target: dead, weight: 100}}
      up: {{target: base, weight: 0, params: {{max_tokens: 4}}}}
    fallback: [down, up]
  colours:
    variants:
      greedy: {{target: base, weight: 50, params: {{temperature: 0, max_tokens: 8}}}}
      warm: {{target: base, weight: 50, params: {{temperature: 1.0, max_tokens: 8, seed: 3}}}}
    experiment:
      metrics: {{liked: {{type: boolean}}}}
      min_samples: 5
"""
    app = create_app(parse_config(config, "live.yaml"), Settings(home=tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as raw:
            yield raw, app.state.gateway


async def test_users_split_feedback_and_report(
    gateway_on_vllm: tuple[httpx.AsyncClient, GatewayState],
) -> None:
    raw, _state = gateway_on_vllm
    client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="-", http_client=raw)
    variants: dict[str, str] = {}
    for i in range(16):
        resp = await client.chat.completions.with_raw_response.create(
            model="colours",
            messages=[{"role": "user", "content": "Name a colour."}],
            user=f"user-{i}",
        )
        completion = resp.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 8
        variant = resp.headers["x-switchboard-variant"]
        variants[f"user-{i}"] = variant
        feedback = await raw.post(
            "/v1/feedback",
            json={
                "inference_id": resp.headers["x-switchboard-inference-id"],
                "name": "liked",
                "value": variant == "greedy",
            },
        )
        assert feedback.status_code == 201
    assert set(variants.values()) == {"greedy", "warm"}
    # Sticky: the same user again gets the same variant.
    again = await client.chat.completions.with_raw_response.create(
        model="colours", messages=[{"role": "user", "content": "Again."}], user="user-3"
    )
    assert again.headers["x-switchboard-variant"] == variants["user-3"]
    report = (await raw.get("/v1/experiments/colours")).json()
    greedy, warm = report["variants"]["greedy"], report["variants"]["warm"]
    assert greedy["n"] + warm["n"] == 17
    assert greedy["metrics"]["liked"]["mean"] == 1.0 and warm["metrics"]["liked"]["mean"] == 0.0
    assert greedy["cost"] is not None and greedy["cost"] > 0
    assert greedy["latency_ms"]["p50"] > 0
    assert report["verdict"]


async def test_streaming_through_a_route_is_logged_with_usage(
    gateway_on_vllm: tuple[httpx.AsyncClient, GatewayState],
) -> None:
    raw, state = gateway_on_vllm
    body = {
        "model": "colours",
        "messages": [{"role": "user", "content": "Hi"}],
        "user": "s1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with raw.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        inference = resp.headers["x-switchboard-inference-id"]
        text = "".join([chunk async for chunk in resp.aiter_text()])
    assert text.rstrip().endswith("data: [DONE]")
    await state.events.flush()
    row = state.events.store.get_event(inference)
    assert row is not None and row["status"] == "ok" and row["stream"] is True
    assert row["completion_tokens"] and row["ttft_ms"] is not None
    assert row["ttft_ms"] <= row["latency_ms"]


async def test_fallback_from_a_dead_engine_to_the_real_one(
    gateway_on_vllm: tuple[httpx.AsyncClient, GatewayState],
) -> None:
    raw, state = gateway_on_vllm
    body = {"model": "resilient", "messages": [{"role": "user", "content": "Hi"}]}
    resp = await raw.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["x-switchboard-variant"] == "up"
    assert resp.json()["choices"][0]["message"]["content"]
    streamed = await raw.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-switchboard-variant"] == "up"
    # Pinned to the dead variant: no fallback, the client sees the 503.
    pinned = await raw.post(
        "/v1/chat/completions", json=body, headers={"x-switchboard-variant": "down"}
    )
    assert pinned.status_code == 503 and pinned.headers["retry-after"]
    await state.events.flush()
    rows = state.events.store.events("resilient")
    down = [r for r in rows if r["variant"] == "down"]
    # One failed attempt for each request that fell back, three for the pinned one: with no
    # fallback the same engine is tried again, up to reliability.max_attempts.
    assert [r["status"] for r in down] == ["error"] * 5
    assert sorted(r["attempt"] for r in down) == [0, 0, 0, 1, 2]
    assert all(r["fallback_from"] == "down" for r in rows if r["variant"] == "up")
