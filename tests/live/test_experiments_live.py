"""A/A traffic with sticky users and feedback through a real gateway on vLLM, the experiment
endpoint polled after every request: the decision never names a winner, and pinned traffic is
kept apart."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.settings import Settings

pytestmark = pytest.mark.slow

STATUSES = {"running", "winner", "no_difference", "guardrail_breach", "sample_ratio_mismatch"}


@pytest.fixture
async def gateway(vllm_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = f"""
models:
  base: {{engine: vllm, urls: ["{vllm_url}"], upstream_model: smollm2}}
routes:
  aa:
    sticky_key: user
    allow_pin: true
    variants:
      one: {{target: base, weight: 50, params: {{temperature: 0, max_tokens: 2}}}}
      two: {{target: base, weight: 50, params: {{temperature: 0, max_tokens: 2}}}}
    experiment:
      metrics: {{correct: {{type: boolean}}}}
      min_samples: 10
      guardrails: {{error_rate: {{margin: 0.05}}}}
"""
    app = create_app(parse_config(config, "live.yaml"), Settings(home=tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as raw:
            yield raw


async def test_aa_polled_after_every_request_names_no_winner(gateway: httpx.AsyncClient) -> None:
    client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="-", http_client=gateway)
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(30)]
    for i in range(90):
        user = rng.choice(users)
        resp = await client.chat.completions.with_raw_response.create(
            model="aa", messages=[{"role": "user", "content": f"Say a number {i}."}], user=user
        )
        # The same coin for both arms: an A/A experiment on the real traffic path.
        correct = rng.random() < 0.5
        posted = await gateway.post(
            "/v1/feedback",
            json={
                "inference_id": resp.headers["x-switchboard-inference-id"],
                "name": "correct",
                "value": correct,
            },
        )
        assert posted.status_code == 201
        report = (await gateway.get("/v1/experiments/aa")).json()
        decision = report["decision"]
        assert decision["status"] in STATUSES and decision["metric"] == "correct"
        assert decision["winner"] is None, report["verdict"]
        assert decision["status"] != "sample_ratio_mismatch"
    # Pinned requests are counted apart, never in the comparison.
    pinned = await client.chat.completions.with_raw_response.create(
        model="aa",
        messages=[{"role": "user", "content": "Pinned."}],
        user="tester",
        extra_headers={"x-switchboard-variant": "two"},
    )
    assert pinned.headers["x-switchboard-variant"] == "two"
    report = (await gateway.get("/v1/experiments/aa")).json()
    assert report["apart"]["pinned"] == {"two": 1}
    assert report["variants"]["one"]["n"] + report["variants"]["two"]["n"] == 90
    assert report["unit"].startswith("sticky key")
    assert (
        report["sample_ratio"]["observed"]["one"] + report["sample_ratio"]["observed"]["two"] <= 30
    )
