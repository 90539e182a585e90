"""What the lifespan builds and every route reads: the gateway's state, built in one step."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.adapters.serving import AdapterServing
from gateway.admission.keys import KeyRing
from gateway.admission.ratelimit import ConcurrencyGate, RateLimiter
from gateway.config.schema import GatewayConfig
from gateway.engines.base import Engine
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.pipelines.runner import PipelineRunner
from gateway.routing.assignment import Router
from gateway.routing.dispatch import Dispatcher
from gateway.routing.targets import Targets
from gateway.settings import Settings
from gateway.telemetry.tracing import Tracing


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: GatewayConfig
    settings: Settings
    engines: dict[str, Engine]
    events: EventLog
    router: Router
    metrics: Metrics
    adapters: AdapterServing
    targets: Targets
    #: prompt pipelines, loaded and compiled at startup
    runner: PipelineRunner
    dispatcher: Dispatcher
    keyring: KeyRing
    limiter: RateLimiter
    gate: ConcurrencyGate
    #: when the lifespan finished building this state (``time.time()``): /v1/models' created
    started_at: float
    #: OpenTelemetry traces (off unless an OTLP endpoint is configured)
    tracing: Tracing
