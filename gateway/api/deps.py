"""What routes get from the application: the state the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from gateway.config import GatewayConfig
from gateway.engines.base import Engine
from gateway.errors import ModelNotFoundError
from gateway.settings import Settings
from gateway.targets import Target, base_target


@dataclass
class GatewayState:
    config: GatewayConfig
    settings: Settings
    engines: dict[str, Engine]

    def target_for(self, name: str) -> Target:
        """The target a client's ``model`` names: a base model (adapters join later)."""
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFoundError(name)
        return base_target(name, engine)


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
