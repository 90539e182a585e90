"""Prometheus metrics, one registry per app (no module globals), served at /metrics.

Two kinds of figures:

- Per inference, from its event (``observe``): requests, errors, latency, time to first token,
  inter-chunk gaps, tokens, cost, retries and fallbacks, rate-limit refusals. Labelled by
  ``route``, ``variant``, ``target`` (the model or adapter that ran), ``pipeline`` and outcome.
- Read when scraped: the event log's queue, spool and drops (``_StateCollector`` here); in-flight
  requests, cooldowns, the retry budget, adapter loads, evictions and state, engine readiness
  and restarts (``gateway.api.metrics.StateCollector``, which reads the gateway's state).
  Nothing is counted twice and the hot path pays for none of it.

Label values come from the configuration only (routes, variants, models, adapters, pipelines)
or from the gateway's own error codes: never a user, a key or a client's free text. A model
name a client made up is not a target (a refusal has no target), an unknown pipeline is
``other``, and past ``MAX_SERIES`` label sets per metric new ones fold into ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.events.log import EventLog
from gateway.events.schema import InferenceEvent
from gateway.telemetry.logs import RequestLog

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: label sets one metric may hold before new ones are folded into ``other``
MAX_SERIES = 2000
OTHER = "other"
#: how long a scrape waits for an engine's health probe
HEALTH_TIMEOUT_S = 2.0
ENGINE_STATES = ("stopped", "starting", "ready", "restarting", "failed")
ADAPTER_STATES = ("loaded", "available", "unloaded")
_CODE = re.compile(r"^[a-z0-9_]{1,48}$")

#: route, variant, target, pipeline: the labels every per-inference figure carries
Key = tuple[str, str, str, str]
BASE_LABELS = ("route", "variant", "target", "pipeline")


class _Children:
    """Label sets resolved once (``labels()`` costs microseconds; a dict lookup does not)."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def get(self, values: tuple[str, ...]) -> Any:
        child = self._cache.get(values)
        if child is None:
            if len(self._cache) >= MAX_SERIES:
                values = (OTHER,) * len(values)
                child = self._cache.get(values)
                if child is not None:
                    return child
            child = self._cache[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(
        self,
        events: EventLog | None = None,
        *,
        pipelines: Collection[str] | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._pipelines = frozenset(pipelines) if pipelines is not None else None
        self.request_log = request_log or RequestLog()
        reg = self.registry
        base = BASE_LABELS
        self.requests = Counter(
            "switchboard_requests",
            "Inferences (attempts, shadows and refusals) by outcome.",
            (*base, "status", "shadow"),
            registry=reg,
        )
        self.errors = Counter(
            "switchboard_request_errors",
            "Failed inferences by the gateway's error code and HTTP status.",
            (*base, "code", "http_status"),
            registry=reg,
        )
        self.latency = Histogram(
            "switchboard_request_latency_seconds",
            "Time to the whole answer of a successful inference.",
            base,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "switchboard_time_to_first_token_seconds",
            "Time from the attempt's start to the first streamed byte.",
            base,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.gaps = Histogram(
            "switchboard_inter_chunk_gap_seconds",
            "Time between consecutive chunks of a stream, as the engine sent them.",
            base,
            buckets=_GAP_BUCKETS,
            registry=reg,
        )
        self.prompt_tokens = Counter(
            "switchboard_prompt_tokens", "Prompt (input) tokens.", base, registry=reg
        )
        self.completion_tokens = Counter(
            "switchboard_completion_tokens", "Completion (output) tokens.", base, registry=reg
        )
        self.cost = Counter(
            "switchboard_cost",
            "Cost of the tokens, in the currency of the models' pricing (gateway.yaml).",
            base,
            registry=reg,
        )
        self.retries = Counter(
            "switchboard_retries",
            "Attempts after a request's first: 'retry' of the same variant, 'fallback' to another.",
            (*base, "kind"),
            registry=reg,
        )
        self.rate_limited = Counter(
            "switchboard_rate_limited",
            "Requests refused with 429 before any variant ran (per-key rates, auth throttle).",
            ("route", "code"),
            registry=reg,
        )
        self.cooldowns = Counter(
            "switchboard_cooldowns",
            "Cooldowns started: a variant (or a directly called target) failed repeatedly.",
            ("route", "variant", "target"),
            registry=reg,
        )
        self.state_unavailable = Counter(
            "switchboard_state_unavailable",
            "Shared-state (Redis) calls that failed or were skipped while it was down, by "
            "operation; each was answered as state.on_unavailable says.",
            ("operation",),
            registry=reg,
        )
        self.auth_failures = Counter(
            "switchboard_auth_failures",
            "Requests refused for a missing or wrong API key (throttled per address).",
            registry=reg,
        )
        self.engine_up = Gauge(
            "switchboard_engine_up",
            "1 when the engine answered its health probe at the last scrape.",
            ("model",),
            registry=reg,
        )
        self.engine_state = Gauge(
            "switchboard_engine_state",
            "1 for the engine's state at the last scrape (stopped, starting, ready, ...).",
            ("model", "state"),
            registry=reg,
        )
        self._requests = _Children(self.requests)
        self._errors = _Children(self.errors)
        self._latency = _Children(self.latency)
        self._ttft = _Children(self.ttft)
        self._gaps = _Children(self.gaps)
        self._prompt = _Children(self.prompt_tokens)
        self._completion = _Children(self.completion_tokens)
        self._cost = _Children(self.cost)
        self._retries = _Children(self.retries)
        self._rate_limited = _Children(self.rate_limited)
        self.collector = _StateCollector(events)
        reg.register(self.collector)

    # -- per inference (the hot path: dict lookups and pre-bound children only) ------------------

    def key(self, event: InferenceEvent) -> Key:
        """The event's labels. A refusal (no attempt) has no target: its model is the
        client's text, which may name nothing."""
        target = (event.adapter or event.model or "") if event.attempt is not None else ""
        pipeline = event.pipeline or ""
        if pipeline and self._pipelines is not None and pipeline not in self._pipelines:
            pipeline = OTHER
        return (event.route or "", event.variant or "", target, pipeline)

    def observe(self, event: InferenceEvent) -> None:
        if event.source == "offline":
            return  # evaluation runs are in the event log, not in the live traffic's metrics
        key = self.key(event)
        status = event.status
        self._requests.get((*key, status, "true" if event.shadow else "false")).inc()
        if self.request_log.enabled:
            self.request_log.write(event, key[2])
        if event.attempt or event.fallback_from:
            # Not the request's first try of its assigned variant: the same variant again, or
            # another (also a first attempt, when the assigned one was cooling down).
            moved = event.fallback_from and event.fallback_from != event.variant
            self._retries.get((*key, "fallback" if moved else "retry")).inc()
        if event.ttft_ms is not None:
            self._ttft.get(key).observe(event.ttft_ms / 1000)
        if status != "ok":
            if status == "error":
                self._error(event, key)
            return
        if event.latency_ms is not None:
            self._latency.get(key).observe(event.latency_ms / 1000)
        if event.prompt_tokens:
            self._prompt.get(key).inc(event.prompt_tokens)
        if event.completion_tokens:
            self._completion.get(key).inc(event.completion_tokens)
        if event.cost:
            self._cost.get(key).inc(event.cost)

    def _error(self, event: InferenceEvent, key: Key) -> None:
        code = event.error_code or "error"
        code = code if _CODE.match(code) else OTHER
        http_status = str(event.http_status or "")
        self._errors.get((*key, code, http_status)).inc()
        if event.http_status == 429 and event.attempt is None:
            self._rate_limited.get((key[0], code)).inc()

    def chunk_gap(self, event: InferenceEvent, seconds: float) -> None:
        """One gap between two chunks of a stream (the relay measures it)."""
        self._gaps.get(self.key(event)).observe(seconds)

    def cooldown(self, route: str, variant: str, target: str) -> None:
        self.cooldowns.labels(route, variant, target).inc()

    def state_down(self, operation: str) -> None:
        self.state_unavailable.labels(operation).inc()

    # -- read when scraped ------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """The event log's figures, read at scrape time (no cost between scrapes). The rest of the
    gateway's state is read by the /metrics route's collector (gateway/api/metrics.py)."""

    def __init__(self, events: EventLog | None) -> None:
        self.events = events

    def collect(self) -> Iterator[Metric]:
        if self.events is not None:
            yield from _event_log(self.events)


def _event_log(events: EventLog) -> Iterator[Metric]:
    stats = events.stats
    yield GaugeMetricFamily(
        "switchboard_event_queue_depth", "Events waiting to be written.", stats.queue_depth
    )
    for name, doc, value in (
        ("switchboard_events_written", "Events written to the database.", stats.written),
        (
            "switchboard_events_spooled",
            "Events spooled to disk while the database was down.",
            stats.spooled,
        ),
        (
            "switchboard_events_replayed",
            "Spooled events replayed into the database.",
            stats.replayed,
        ),
        (
            "switchboard_events_dropped",
            "Events lost: the queue was full, or the spool's disk failed too.",
            stats.dropped,
        ),
        (
            "switchboard_events_quarantined",
            "Rows the database refused as data, moved to spool/quarantine.jsonl.",
            stats.quarantined,
        ),
    ):
        yield CounterMetricFamily(name, doc, value)
    yield GaugeMetricFamily(
        "switchboard_event_spool_bytes",
        "Size of the spool file: events waiting for the database to come back.",
        _size(events.spool_path),
    )


def _size(path: Any) -> int:
    try:
        return int(path.stat().st_size)
    except OSError:
        return 0
