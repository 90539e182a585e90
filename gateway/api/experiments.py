"""GET /v1/experiments/{route} (the analysis) and POST .../promote (send all traffic to one)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from gateway.api.bodies import read_model
from gateway.api.deps import GatewayState, get_state
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.experiments import analyse
from gateway.protocol import ErrorResponse, PromoteRequest
from gateway.routing import Route

router = APIRouter()


def _route(state: GatewayState, name: str) -> Route:
    route = state.router.get(name)
    if route is None:
        raise NotFoundError(f"No route named '{name}'.", param="route", code="route_not_found")
    return route


@router.get("/v1/experiments/{name}", responses={404: {"model": ErrorResponse}})
async def get_experiment(
    name: str, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    route = _route(state, name)
    await state.events.flush()
    events = await asyncio.to_thread(state.events.store.events, name)
    feedback = await asyncio.to_thread(state.events.store.feedback, name)
    promoted = route.promoted.name if route.promoted else None
    return analyse(name, route.spec, events, feedback, promoted=promoted)


@router.post(
    "/v1/experiments/{name}/promote",
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def promote(
    name: str, request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    route = _route(state, name)
    body = await read_model(request, PromoteRequest)
    if body.variant not in route.variants:
        raise InvalidRequestError(
            f"Route '{name}' has no variant '{body.variant}'; it has {', '.join(route.variants)}.",
            param="variant",
        )
    # Persisted first, so a restart (or another replica at its start) keeps the decision.
    await asyncio.to_thread(state.events.store.set_override, name, body.variant, time.time())
    route.promoted = route.variants[body.variant]
    return {"route": name, "promoted": body.variant, "share": route.share()}
