"""Prometheus metrics, one registry per app (no module globals), served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.events.log import EventLog
from gateway.events.schema import InferenceEvent

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 32768)


class Metrics:
    def __init__(self, events: EventLog | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = ("route", "variant")
        self.requests = Counter(
            "switchboard_requests",
            "Inferences by outcome.",
            (*labels, "status", "shadow"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "switchboard_request_latency_seconds",
            "Time to the whole answer.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "switchboard_time_to_first_token_seconds",
            "Time to the first streamed byte.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Histogram(
            "switchboard_tokens",
            "Tokens per inference.",
            (*labels, "kind"),
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "switchboard_auth_failures",
            "Requests refused for a missing or wrong API key (throttled per address).",
            registry=self.registry,
        )
        if events is not None:
            stats = events.stats
            for name, doc, read in (
                (
                    "switchboard_event_queue_depth",
                    "Events waiting to be written.",
                    lambda: stats.queue_depth,
                ),
                (
                    "switchboard_events_dropped",
                    "Events dropped (queue full).",
                    lambda: stats.dropped,
                ),
                (
                    "switchboard_events_spooled",
                    "Events spooled while the database was down.",
                    lambda: stats.spooled,
                ),
                (
                    "switchboard_events_written",
                    "Events written to the database.",
                    lambda: stats.written,
                ),
                (
                    "switchboard_events_quarantined",
                    "Rows the database refused as data, moved to spool/quarantine.jsonl.",
                    lambda: stats.quarantined,
                ),
            ):
                Gauge(name, doc, registry=self.registry).set_function(read)

    def observe(self, event: InferenceEvent) -> None:
        if event.source == "offline":
            return  # evaluation runs are in the event log, not in the live traffic's metrics
        route, variant = event.route or "", event.variant or ""
        shadow = "true" if event.shadow else "false"
        self.requests.labels(route, variant, event.status, shadow).inc()
        if event.status != "ok":
            return
        if event.latency_ms is not None:
            self.latency.labels(route, variant).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            self.ttft.labels(route, variant).observe(event.ttft_ms / 1000)
        if event.prompt_tokens is not None:
            self.tokens.labels(route, variant, "prompt").observe(event.prompt_tokens)
        if event.completion_tokens is not None:
            self.tokens.labels(route, variant, "completion").observe(event.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
