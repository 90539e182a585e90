"""What routes get from the application: the state the lifespan built."""

from __future__ import annotations

from fastapi import Request

from gateway.state import GatewayState


async def get_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, which costs
    # a thread hop on every request.
    state: GatewayState = request.app.state.gateway
    return state
