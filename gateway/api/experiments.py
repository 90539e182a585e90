"""GET /v1/experiments/{route} (the analysis) and POST .../promote (send all traffic to one)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from gateway.api.bodies import AUTH_ERRORS, error_responses, json_body, read_model
from gateway.api.deps import get_state
from gateway.errors import InvalidRequestError, NotFoundError, StoreError, StoreUnavailableError
from gateway.experiments.analysis import analyse
from gateway.protocol import PromoteRequest
from gateway.routing.assignment import Route
from gateway.state import GatewayState

router = APIRouter()


def _route(state: GatewayState, name: str) -> Route:
    route = state.router.get(name)
    if route is None:
        raise NotFoundError(f"No route named '{name}'.", param="route", code="route_not_found")
    return route


@router.get("/v1/experiments/{name}", responses=error_responses(404, 503, *AUTH_ERRORS))
async def get_experiment(
    name: str, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    route = _route(state, name)
    await state.events.flush()
    try:
        events = await asyncio.to_thread(state.events.store.events, name)
        feedback = await asyncio.to_thread(state.events.store.feedback, name)
    except StoreError as exc:
        raise StoreUnavailableError(
            f"The event database is unavailable: {exc}. Retry later."
        ) from exc
    promoted = route.promoted.name if route.promoted else None
    return analyse(name, route.spec, events, feedback, promoted=promoted)


@router.post(
    "/v1/experiments/{name}/promote",
    responses=error_responses(400, 404, 413, 503, *AUTH_ERRORS),
    openapi_extra=json_body(PromoteRequest),
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
    try:
        await asyncio.to_thread(state.events.store.set_override, name, body.variant, time.time())
    except StoreError as exc:
        raise StoreUnavailableError(
            f"The event database is unavailable: {exc}. Retry later."
        ) from exc
    route.promoted = route.variants[body.variant]
    return {"route": name, "promoted": body.variant, "share": route.share()}
