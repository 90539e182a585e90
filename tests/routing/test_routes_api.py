"""Routes through the API with scripted engines: headers, feedback, shadow, fallback, report."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.errors import ConfigError, EngineUnavailableError, UpstreamRejectedError
from tests.support.fakes import FakeEngine

CONFIG = """
models:
  m1:
    engine: vllm
    urls: ["http://127.0.0.1:9"]
    pricing: {prompt_per_1m: 1000, completion_per_1m: 2000}
  m2: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  slow: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    sticky_key: user
    allow_pin: true
    variants:
      first: {target: m1, weight: 50, params: {temperature: 0.0}}
      second: {target: m2, weight: 50}
      shadowed: {target: slow, weight: 0}
    shadow: [{variant: shadowed, sample_rate: 1.0}]
    fallback: [first, second]
    experiment:
      metrics: {correct: {type: boolean}, rating: {type: float}}
      min_samples: 5
"""
ASK: list[Any] = [{"role": "user", "content": "hi"}]


class SlowEngine(FakeEngine):
    """Answers once ``gate`` is set (set at start unless ``held``)."""

    def __init__(self, model_id: str, *, text: str, held: bool = False) -> None:
        super().__init__(model_id, text=text)
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.gate.wait()
        return await super().chat(body)


def engines(**override: FakeEngine) -> dict[str, Any]:
    base = {
        "m1": FakeEngine("m1", text="from m1"),
        "m2": FakeEngine("m2", text="from m2"),
        "slow": SlowEngine("slow", text="shadow text"),
    }
    return {**base, **override}


async def test_route_headers_extension_and_sticky_users(gateway: Any) -> None:
    async with gateway(engines(), CONFIG) as (client, _raw):
        seen: dict[str, str] = {}
        for i in range(40):
            resp = await client.chat.completions.with_raw_response.create(
                model="qa", messages=ASK, user=f"user-{i % 10}"
            )
            data = resp.parse()
            variant = resp.headers["x-switchboard-variant"]
            assert resp.headers["x-switchboard-route"] == "qa"
            assert resp.headers["x-switchboard-inference-id"].startswith("inf-")
            assert data.switchboard["variant"] == variant
            assert data.choices[0].message.content == f"from {'m1' if variant == 'first' else 'm2'}"
            assert seen.setdefault(f"user-{i % 10}", variant) == variant
        assert set(seen.values()) == {"first", "second"}


async def test_variant_params_override_the_client(gateway: Any) -> None:
    m1 = FakeEngine("m1")
    async with gateway(engines(m1=m1), CONFIG) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions",
            json={"model": "qa", "messages": ASK, "temperature": 1.5},
            headers={"x-switchboard-variant": "first"},
        )
    assert resp.status_code == 200
    assert m1.bodies[-1]["temperature"] == 0.0


async def test_shadow_runs_in_background_and_is_logged(gateway: Any) -> None:
    slow = SlowEngine("slow", text="shadow text", held=True)
    async with gateway(engines(slow=slow), CONFIG) as (_, raw):
        # The shadow cannot answer until the response is in: a shadow that delayed the
        # response would time this out, however fast or slow the machine.
        ask = raw.post("/v1/chat/completions", json={"model": "qa", "messages": ASK})
        resp = await asyncio.wait_for(ask, timeout=30)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] in ("from m1", "from m2")
        slow.gate.set()
        app_state = gateway.state
        await app_state.dispatcher.drain_shadows()
        await app_state.events.flush()
        rows = app_state.events.store.events("qa")
    shadows = [r for r in rows if r["shadow"]]
    assert len(shadows) == 1 and shadows[0]["variant"] == "shadowed"
    assert shadows[0]["status"] == "ok"
    assert len(slow.bodies) == 1 and "stream" not in slow.bodies[0]


async def test_fallback_after_a_retryable_failure(gateway: Any) -> None:
    broken = FakeEngine("m1", fail_with=EngineUnavailableError("engine down"))
    async with gateway(engines(m1=broken), CONFIG) as (_client, raw):
        # Find a user that lands on 'first' (the broken one).
        for i in range(50):
            resp = await raw.post(
                "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": f"u{i}"}
            )
            assert resp.status_code == 200
            if resp.json()["switchboard"]["variant"] == "second" and broken.bodies:
                break
        state = gateway.state
        await state.events.flush()
        rows = [r for r in state.events.store.events("qa") if not r["shadow"]]
    failed = [r for r in rows if r["status"] == "error"]
    assert failed and all(r["variant"] == "first" for r in failed)
    assert all(r["error_code"] == "engine_unavailable" for r in failed)
    recovered = [r for r in rows if r["fallback_from"] == "first"]
    assert recovered and all(r["variant"] == "second" and r["attempt"] == 1 for r in recovered)


async def test_a_client_error_is_not_retried_elsewhere(gateway: Any) -> None:
    rejecting = FakeEngine("m1", fail_with=UpstreamRejectedError("prompt too long"))
    m2 = FakeEngine("m2")
    async with gateway(engines(m1=rejecting, m2=m2), CONFIG) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions",
            json={"model": "qa", "messages": ASK},
            headers={"x-switchboard-variant": "first"},
        )
    assert resp.status_code == 400
    assert resp.headers["x-switchboard-variant"] == "first"
    assert m2.bodies == []


async def test_feedback_validation(gateway: Any) -> None:
    async with gateway(engines(), CONFIG) as (client, raw):
        done = await client.chat.completions.with_raw_response.create(model="qa", messages=ASK)
        inference = done.headers["x-switchboard-inference-id"]
        direct = await client.chat.completions.with_raw_response.create(model="m2", messages=ASK)
        direct_id = direct.headers["x-switchboard-inference-id"]

        async def post(body: dict[str, Any]) -> httpx.Response:
            response: httpx.Response = await raw.post("/v1/feedback", json=body)
            return response

        ok = await post({"inference_id": inference, "name": "correct", "value": True})
        assert ok.status_code == 201 and ok.json()["value"] is True
        assert (
            await post({"inference_id": inference, "name": "rating", "value": 4.5})
        ).status_code == 201
        assert (
            await post({"inference_id": inference, "name": "comment", "value": "nice"})
        ).status_code == 201
        unknown = await post({"inference_id": "inf-nope", "name": "correct", "value": True})
        assert (
            unknown.status_code == 404 and unknown.json()["error"]["code"] == "inference_not_found"
        )
        undeclared = await post({"inference_id": inference, "name": "speed", "value": 1.0})
        assert undeclared.status_code == 400 and undeclared.json()["error"]["param"] == "name"
        wrong = await post({"inference_id": inference, "name": "correct", "value": 0.5})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "value"
        wrong = await post({"inference_id": inference, "name": "rating", "value": True})
        assert wrong.status_code == 400
        no_metrics = await post({"inference_id": direct_id, "name": "correct", "value": True})
        assert no_metrics.status_code == 400
        missing = await post({"inference_id": inference, "name": "correct"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "value"


async def test_report_promote_and_metrics(gateway: Any, tmp_path: Any) -> None:
    async with gateway(engines(), CONFIG) as (client, raw):
        for i in range(30):
            resp = await client.chat.completions.with_raw_response.create(
                model="qa", messages=ASK, user=f"user-{i}"
            )
            await raw.post(
                "/v1/feedback",
                json={
                    "inference_id": resp.headers["x-switchboard-inference-id"],
                    "name": "correct",
                    "value": resp.headers["x-switchboard-variant"] == "second",
                },
            )
        report = (await raw.get("/v1/experiments/qa")).json()
        assert report["variants"]["first"]["n"] + report["variants"]["second"]["n"] == 30
        assert report["variants"]["first"]["metrics"]["correct"]["mean"] == 0.0
        assert report["variants"]["second"]["metrics"]["correct"]["mean"] == 1.0
        assert report["variants"]["first"]["cost"] == pytest.approx((3 * 1000 + 2 * 2000) / 1e6)
        assert "beats" in report["verdict"] or "Not enough" in report["verdict"]
        metrics = (await raw.get("/metrics")).text
        assert (
            'switchboard_requests_total{pipeline="plain",route="qa",shadow="false",status="ok",'
            'target="m1",variant="first"}' in metrics
        )
        assert "switchboard_event_queue_depth" in metrics
        bad = await raw.post("/v1/experiments/qa/promote", json={"variant": "nope"})
        assert bad.status_code == 400
        assert (await raw.get("/v1/experiments/nope")).status_code == 404
        promoted = await raw.post("/v1/experiments/qa/promote", json={"variant": "second"})
        assert promoted.json()["share"] == {"first": 0.0, "second": 1.0, "shadowed": 0.0}
        for i in range(5):
            resp = await raw.post(
                "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": f"user-{i}"}
            )
            assert resp.headers["x-switchboard-variant"] == "second"
    # The promotion is kept across a restart (same GATEWAY_HOME).
    async with gateway(engines(), CONFIG) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": "x"}
        )
        assert resp.headers["x-switchboard-variant"] == "second"


async def test_rejected_requests_are_logged_too(gateway: Any) -> None:
    async with gateway(engines(), CONFIG) as (_, raw):
        resp = await raw.post("/v1/chat/completions", json={"model": "nope", "messages": ASK})
        assert resp.status_code == 404
        inference = resp.headers["x-switchboard-inference-id"]
        bad = await raw.post("/v1/chat/completions", json={"model": "qa", "messages": []})
        assert bad.status_code == 400 and bad.headers["x-switchboard-inference-id"]
        state = gateway.state
        await state.events.flush()
        row = state.events.store.get_event(inference)
    assert row is not None and row["status"] == "error" and row["http_status"] == 404


async def test_route_config_errors_name_the_key(gateway: Any) -> None:
    broken = CONFIG.replace("target: m2", "target: m9")
    with pytest.raises(ConfigError) as info:
        async with gateway(engines(), broken):
            pass
    assert "routes.qa.variants.second.target: 'm9' is not a model or adapter" in str(info.value)
