"""GET /metrics in Prometheus' text format (docs/operations.md lists every metric).

Per-inference figures are counted as events are recorded (gateway/events/metrics.py); what the
gateway's state holds anyway (in flight, cooldowns, the retry budget, adapters, engines) is read
here, at scrape time, so that between scrapes the hot path pays for none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.api.deps import get_state
from gateway.engines.fleet import Fleet
from gateway.events.metrics import ADAPTER_STATES, ENGINE_STATES, HEALTH_TIMEOUT_S
from gateway.state import GatewayState

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(state: Annotated[GatewayState, Depends(get_state)]) -> Response:
    await refresh(state)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


class StateCollector(Collector):
    """The gateway's state as metrics; the lifespan registers one per app."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from _gateway(self.state)


async def refresh(state: GatewayState) -> None:
    """Probe the engines (concurrently, bounded) and set their gauges."""
    metrics = state.metrics
    names = list(state.engines)
    probes = [_probe(state.engines[name].health) for name in names]
    for name, (up, current) in zip(names, await asyncio.gather(*probes), strict=True):
        metrics.engine_up.labels(name).set(1 if up else 0)
        for known in ENGINE_STATES:
            metrics.engine_state.labels(name, known).set(1 if known == current else 0)


async def _probe(health: Callable[[], Any]) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            result = await health()
    except Exception:  # a probe that fails or hangs is an engine that is down
        return False, "failed"
    return bool(result.ready), str(result.state)


def _gateway(state: GatewayState) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "switchboard_requests_in_flight",
        "Chat requests admitted and not finished (streams until their end).",
        state.gate.in_flight,
    )
    dispatcher = state.dispatcher
    yield GaugeMetricFamily(
        "switchboard_retry_budget",
        "Retries the shared retry budget holds now.",
        dispatcher.budget.level,
    )
    cooling = GaugeMetricFamily(
        "switchboard_cooldown_remaining_seconds",
        "Seconds a cooling variant (or target) has left; absent when none cools down.",
        labels=("route", "variant", "target"),
    )
    for key, seconds in dispatcher.cooldowns.cooling().items():
        cooling.add_metric(_cool_labels(state, key), seconds)
    yield cooling
    yield from _adapters(state)
    restarts = CounterMetricFamily(
        "switchboard_engine_restarts",
        "Times the gateway restarted a vLLM it supervises after it died.",
        labels=("model",),
    )
    for name, engine in state.engines.items():
        supervisor = getattr(engine, "supervisor", None)
        restarts.add_metric([name], getattr(supervisor, "restarts", 0) if supervisor else 0)
    yield restarts
    yield from _replicas(state)


def _cool_labels(state: GatewayState, key: str) -> list[str]:
    """A cooldown's key is ``route/variant``, or a target's name (which may hold '/')."""
    route_name, _, variant_name = key.partition("/")
    route = state.config.routes.get(route_name)
    if route is not None and variant_name in route.variants:
        return [route_name, variant_name, route.variants[variant_name].target]
    return ["", "", key]


def _adapters(state: GatewayState) -> Iterator[Metric]:
    adapters = state.adapters
    current = GaugeMetricFamily(
        "switchboard_adapter_state",
        "1 for each adapter's state: loaded (in vLLM), available (loads on use) or unloaded.",
        labels=("adapter", "model", "state"),
    )
    loads = CounterMetricFamily(
        "switchboard_adapter_loads", "Adapter loads into vLLM.", labels=("adapter", "model")
    )
    evictions = CounterMetricFamily(
        "switchboard_adapter_evictions",
        "Adapters unloaded to make room for another (least recently used first).",
        labels=("adapter", "model"),
    )
    load_seconds = GaugeMetricFamily(
        "switchboard_adapter_load_seconds",
        "How long the adapter's last load into vLLM took.",
        labels=("adapter", "model"),
    )
    load_counts = getattr(adapters, "loads", {})
    eviction_counts = getattr(adapters, "evictions", {})
    for adapter in adapters.registry.all():
        name, model = adapter.name, adapter.base_model
        now = adapters.state(name)
        for known in ADAPTER_STATES:
            current.add_metric([name, model, known], 1 if known == now else 0)
        loads.add_metric([name, model], load_counts.get(name, 0))
        evictions.add_metric([name, model], eviction_counts.get(name, 0))
        if name in adapters.load_seconds:
            load_seconds.add_metric([name, model], adapters.load_seconds[name])
    yield from (current, loads, evictions, load_seconds)


def _replicas(state: GatewayState) -> Iterator[Metric]:
    """Each vLLM replica of each model (``engines/fleet.py``): a fleet's balance at a glance."""
    labels = ("model", "replica", "url")
    up = GaugeMetricFamily(
        "switchboard_replica_up",
        "1 while the replica takes traffic; 0 while it is ejected or (re)starting.",
        labels=labels,
    )
    in_flight = GaugeMetricFamily(
        "switchboard_replica_in_flight",
        "Calls the gateway has in flight on the replica (what least_outstanding balances).",
        labels=labels,
    )
    served = CounterMetricFamily(
        "switchboard_replica_calls", "Calls the replica answered.", labels=labels
    )
    ejections = CounterMetricFamily(
        "switchboard_replica_ejections",
        "Times the replica was taken out of the rotation after a failure.",
        labels=labels,
    )
    adapters = GaugeMetricFamily(
        "switchboard_replica_adapters",
        "Adapters the gateway loaded on the replica (adapter affinity keeps this low).",
        labels=labels,
    )
    for name, engine in state.engines.items():
        fleet = getattr(engine, "fleet", None)
        if not isinstance(fleet, Fleet):
            continue
        for replica in fleet.replicas:
            key = [name, str(replica.index), replica.url]
            up.add_metric(key, 1 if replica.in_rotation else 0)
            in_flight.add_metric(key, replica.outstanding)
            served.add_metric(key, replica.served)
            ejections.add_metric(key, replica.ejections_total)
            adapters.add_metric(key, len(replica.adapters))
    yield from (up, in_flight, served, ejections, adapters)
