"""/metrics after a known mix of requests equals the counts, through the in-process gateway.

Scripted engines at the engine seam (a real ``VLLMEngine`` against a scripted vLLM for the
adapters); everything above it (admission, routing, fallbacks, cooldowns, the relay, the event
log) is the real code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.engines.vllm import VLLMEngine
from gateway.events.metrics import MAX_SERIES, OTHER, Metrics
from gateway.events.schema import InferenceEvent
from tests.observability.support import (
    adapter_folder,
    chat,
    config,
    fake_engines,
    labels_of,
    samples,
    value,
)
from tests.support.adapter_fakes import ScriptedVLLM
from tests.support.apps import AppFactory
from tests.support.handler_server import serving

COST_PER_CALL = (3 * 1000 + 2 * 2000) / 1e6  # the fake's usage at m1's pricing


@pytest.fixture
async def vllm_url() -> AsyncIterator[str]:
    async with serving(ScriptedVLLM().handle) as url:
        yield url


async def test_metrics_equal_a_known_mix_of_requests(
    gateway: AppFactory, tmp_path: Path, vllm_url: str
) -> None:
    base = VLLMEngine(model_id="base", upstream_model="base-upstream", urls=[vllm_url])
    engines = {**fake_engines(), "base": base}
    async with gateway(engines, config(adapter_folder(tmp_path), vllm_url)) as (_, raw):
        for _ in range(3):
            assert (await chat(raw, "m1")).status_code == 200  # a model, directly
        for name in ("ad-a", "ad-a", "ad-b"):
            assert (await chat(raw, name)).status_code == 200  # adapters (ad-b evicts ad-a)
        for _ in range(4):
            assert (await chat(raw, "qa")).status_code == 200  # a route
        cot = await chat(raw, "m1", switchboard={"pipeline": "cot"})  # a pipeline
        assert cot.status_code == 200
        for _ in range(3):
            # shaky fails and falls back; its second failure cools it down, so the third
            # request goes to the fallback first.
            assert (await chat(raw, "flaky")).status_code == 200
        assert (await chat(raw, "broken")).status_code == 502  # failed, not retried
        for _ in range(2):
            streamed = await chat(raw, "m1", stream=True)
            assert streamed.status_code == 200 and streamed.text.endswith("[DONE]\n\n")
        assert (await chat(raw, "no-such-model")).status_code == 404  # refused
        await gateway.state.events.flush()
        found = samples((await raw.get("/metrics")).text)

    requests = "switchboard_requests_total"
    assert value(found, requests) == 20  # every event, once
    assert value(found, requests, route="", target="m1", pipeline="plain", status="ok") == 5
    assert value(found, requests, target="ad-a", status="ok") == 2
    assert value(found, requests, target="ad-b", status="ok") == 1
    assert value(found, requests, route="qa", variant="first", target="m1", status="ok") == 4
    assert value(found, requests, target="m1", pipeline="cot", status="ok") == 1
    assert value(found, requests, route="flaky", variant="steady", status="ok") == 3
    assert value(found, requests, route="flaky", variant="shaky", status="error") == 2
    assert value(found, requests, target="broken", status="error") == 1
    # A made-up model name is no target: the refusal has empty labels and its code.
    assert value(found, requests, route="", target="", status="error") == 1

    errors = "switchboard_request_errors_total"
    assert value(found, errors) == 4
    assert value(found, errors, target="broken", code="upstream_error", http_status="502") == 1
    assert value(found, errors, route="flaky", variant="shaky", http_status="503") == 2
    assert value(found, errors, target="", code="model_not_found", http_status="404") == 1

    # Retries and fallbacks: each flaky request ran steady as a fallback of shaky.
    retries = "switchboard_retries_total"
    assert value(found, retries, route="flaky", variant="steady", kind="fallback") == 3
    assert value(found, retries, kind="retry") == 0
    assert value(found, "switchboard_cooldowns_total", route="flaky", variant="shaky") == 1
    cooling = labels_of(found, "switchboard_cooldown_remaining_seconds")
    assert cooling == [{"route": "flaky", "variant": "shaky", "target": "bad"}]

    # Latency of every success; time to first token and chunk gaps of the two streams.
    assert value(found, "switchboard_request_latency_seconds_count") == 16
    ttft = "switchboard_time_to_first_token_seconds_count"
    assert value(found, ttft) == 2 and value(found, ttft, target="m1", route="") == 2
    # "from", "m1", [DONE]: two waits after the first chunk, per stream.
    assert value(found, "switchboard_inter_chunk_gap_seconds_count", target="m1") == 4

    # Tokens and cost: every non-streamed success reported 3 + 2 tokens (streams no usage).
    assert value(found, "switchboard_prompt_tokens_total") == 3 * 14
    assert value(found, "switchboard_completion_tokens_total") == 2 * 14
    assert value(found, "switchboard_prompt_tokens_total", target="ad-a") == 6
    m1_calls = 3 + 4 + 1  # direct, route, pipeline
    assert value(found, "switchboard_cost_total", target="m1") == pytest.approx(
        m1_calls * COST_PER_CALL
    )
    assert value(found, "switchboard_cost_total", target="m2") == 0  # no pricing

    # Adapters: ad-a loaded, then evicted for ad-b (max-loras=1).
    assert value(found, "switchboard_adapter_loads_total", adapter="ad-a") == 1
    assert value(found, "switchboard_adapter_loads_total", adapter="ad-b") == 1
    assert value(found, "switchboard_adapter_evictions_total", adapter="ad-a") == 1
    state = "switchboard_adapter_state"
    assert value(found, state, adapter="ad-b", model="base", state="loaded") == 1
    assert value(found, state, adapter="ad-a", state="available") == 1
    assert value(found, state, adapter="ad-a", state="loaded") == 0

    # Engines, admission and the event log.
    assert value(found, "switchboard_engine_up", model="m1") == 1
    # The scripted vLLM answers 404 to /health: the probe reads it as down.
    assert value(found, "switchboard_engine_up", model="base") == 0
    assert value(found, "switchboard_engine_state", model="base", state="failed") == 1
    assert value(found, "switchboard_engine_state", model="m1", state="ready") == 1
    assert value(found, "switchboard_engine_restarts_total", model="m1") == 0
    assert value(found, "switchboard_requests_in_flight") == 0
    assert value(found, "switchboard_events_written_total") == 20
    assert value(found, "switchboard_events_dropped_total") == 0
    assert value(found, "switchboard_event_queue_depth") == 0
    assert value(found, "switchboard_event_spool_bytes") == 0


async def test_an_engine_that_is_down_reads_zero(gateway: AppFactory, tmp_path: Path) -> None:
    engines = {**fake_engines(), "base": fake_engines()["m1"]}
    engines["m2"].ready = False
    async with gateway(engines, config(adapter_folder(tmp_path), "http://127.0.0.1:9")) as (
        _,
        raw,
    ):
        found = samples((await raw.get("/metrics")).text)
    assert value(found, "switchboard_engine_up", model="m2") == 0
    assert value(found, "switchboard_engine_state", model="m2", state="restarting") == 1


def _event(**fields: object) -> InferenceEvent:
    base: dict[str, object] = {"id": "inf-x", "ts": time.time(), "status": "error"}
    return InferenceEvent(**{**base, **fields})  # type: ignore[arg-type]


def test_rate_limit_refusals_are_counted_by_code() -> None:
    metrics = Metrics()
    metrics.observe(_event(http_status=429, error_code="rate_limit_exceeded", model="free text"))
    metrics.observe(_event(http_status=429, error_code="auth_throttled"))
    found = samples(metrics.render().decode())
    assert value(found, "switchboard_rate_limited_total", code="rate_limit_exceeded") == 1
    assert value(found, "switchboard_rate_limited_total", code="auth_throttled") == 1
    assert value(found, "switchboard_request_errors_total", target="") == 2


def test_labels_stay_bounded() -> None:
    """Client text never becomes a label: unknown pipelines, odd codes and a flood of label
    sets all fold into 'other'."""
    metrics = Metrics(pipelines={"plain"})
    metrics.observe(_event(attempt=0, model="m", pipeline="made-up", error_code="Oops: <b>"))
    for i in range(MAX_SERIES + 5):
        metrics.observe(_event(attempt=0, model=f"m{i}", status="ok"))
    found = samples(metrics.render().decode())
    assert value(found, "switchboard_request_errors_total", pipeline=OTHER, code=OTHER) == 1
    assert value(found, "switchboard_requests_total", target=OTHER) == 6
    assert len(labels_of(found, "switchboard_requests_total")) <= MAX_SERIES + 1


DEAD = "http://127.0.0.1:9"


@contextlib.asynccontextmanager
async def dead_and_live(gateway: AppFactory) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A gateway whose model ``pair`` is a fleet of a dead replica and a scripted live one."""
    vllm = ScriptedVLLM()
    async with serving(vllm.handle) as live:
        pair = VLLMEngine(model_id="pair", upstream_model=vllm.served, urls=[DEAD, live])
        text = f'models:\n  pair: {{engine: vllm, urls: ["{DEAD}", "{live}"]}}\n'
        async with gateway({"pair": pair}, text) as (_, raw):
            yield raw, live


async def test_each_replica_of_a_fleet_has_its_series(gateway: AppFactory) -> None:
    """The dead replica is ejected (counted, down), the live one answers every call; both
    read zero in flight once the requests ended."""
    async with dead_and_live(gateway) as (raw, live):
        for _ in range(4):
            assert (await chat(raw, "pair")).status_code == 200
        found = samples((await raw.get("/metrics")).text)

    def at(name: str, replica: str) -> float:
        return value(found, name, model="pair", replica=replica)

    assert at("switchboard_replica_up", "0") == 0 and at("switchboard_replica_up", "1") == 1
    assert at("switchboard_replica_ejections_total", "0") == 1
    assert at("switchboard_replica_ejections_total", "1") == 0
    assert at("switchboard_replica_calls_total", "0") == 0
    assert at("switchboard_replica_calls_total", "1") == 4
    assert at("switchboard_replica_in_flight", "0") == at("switchboard_replica_in_flight", "1") == 0
    assert labels_of(found, "switchboard_replica_up")[1]["url"] == live


async def test_ready_and_the_overview_list_each_replica_of_a_fleet(gateway: AppFactory) -> None:
    """README "Scaling out": /ready gives each replica's state, in-flight count and error."""
    async with dead_and_live(gateway) as (raw, live):
        assert (await chat(raw, "pair")).status_code == 200
        ready = await raw.get("/ready")
        overview = (await raw.get("/v1/overview")).json()
    # The scripted vLLM has no /health: its probe fails too, so the fleet reads not ready.
    replicas = ready.json()["engines"]["pair"]["replicas"]
    assert [r["url"] for r in replicas] == [DEAD, live]
    assert replicas[0]["state"] == "ejected" and replicas[0]["ejections"] == 1
    assert replicas[0]["last_error"] and replicas[1]["served"] == 1
    assert all(r["outstanding"] == 0 for r in replicas)
    # The console's overview reads the same snapshot.
    assert [r["state"] for r in overview["models"]["pair"]["replicas"]] == ["ejected", "ready"]
