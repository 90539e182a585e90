"""What routes get from the application: the state the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from gateway.config import GatewayConfig
from gateway.engines.base import Engine
from gateway.errors import ModelNotFoundError
from gateway.settings import Settings


@dataclass
class GatewayState:
    config: GatewayConfig
    settings: Settings
    engines: dict[str, Engine]

    def engine_for(self, model: str) -> Engine:
        try:
            return self.engines[model]
        except KeyError:
            raise ModelNotFoundError(model) from None


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
