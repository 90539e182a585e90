"""What routes get from the application: the state the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from gateway.config import GatewayConfig
from gateway.engines.base import Engine
from gateway.errors import ModelNotFoundError
from gateway.settings import Settings
from gateway.targets import Target, base_target

if TYPE_CHECKING:
    from gateway.dispatch import Dispatcher
    from gateway.events import EventLog
    from gateway.metrics import Metrics
    from gateway.routing import Router


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

    def target_names(self) -> set[str]:
        """Every name a variant or a client may use as a target."""
        return set(self.engines)

    def target_for(self, name: str) -> Target:
        """The target a client's ``model`` names: a base model (adapters join later)."""
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFoundError(name)
        return base_target(name, engine)


def require_dispatcher(state: GatewayState) -> Dispatcher:
    assert state.dispatcher is not None, "the lifespan sets the dispatcher"
    return state.dispatcher


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
