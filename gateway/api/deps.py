"""What routes get from the application: the state the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from gateway.admission.keys import KeyRing
from gateway.admission.ratelimit import ConcurrencyGate, RateLimiter
from gateway.config.schema import GatewayConfig
from gateway.engines.base import Engine
from gateway.engines.target import Target, base_target
from gateway.errors import ModelNotFoundError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.adapters.serving import AdapterServing
    from gateway.events.log import EventLog
    from gateway.events.metrics import Metrics
    from gateway.pipelines.runner import PipelineRunner
    from gateway.routing.assignment import Router
    from gateway.routing.dispatch import Dispatcher


@dataclass
class GatewayState:
    config: GatewayConfig
    settings: Settings
    engines: dict[str, Engine]
    events: EventLog
    router: Router
    metrics: Metrics
    # Set right after construction: the dispatcher resolves targets through this state.
    dispatcher: Dispatcher | None = None
    adapters: AdapterServing | None = None
    #: prompt pipelines, loaded and compiled at startup
    runner: PipelineRunner | None = None
    keyring: KeyRing = field(default_factory=lambda: KeyRing([]))
    limiter: RateLimiter = field(default_factory=RateLimiter)
    gate: ConcurrencyGate = field(default_factory=lambda: ConcurrencyGate(None))
    _base_targets: dict[str, Target] = field(default_factory=dict, repr=False)

    def target_names(self) -> set[str]:
        """Every name a variant or a client may use as a target."""
        adapters = self.adapters.names() if self.adapters is not None else []
        return set(self.engines) | set(adapters)

    def target_for(self, name: str) -> Target:
        """The target a client's ``model`` names: a base model or an adapter."""
        target = self._base_targets.get(name)
        if target is not None:
            return target
        engine = self.engines.get(name)
        if engine is not None:
            # Base targets never change: built once, not on every lookup of every request.
            target = self._base_targets[name] = base_target(name, engine)
            return target
        target = self.adapters.target(name) if self.adapters is not None else None
        if target is None:
            raise ModelNotFoundError(name)
        return target


def require_dispatcher(state: GatewayState) -> Dispatcher:
    assert state.dispatcher is not None, "the lifespan sets the dispatcher"
    return state.dispatcher


async def get_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, which costs
    # a thread hop on every request.
    state: GatewayState = request.app.state.gateway
    return state
