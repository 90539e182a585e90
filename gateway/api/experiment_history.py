"""GET /v1/experiments/{route}/history: the decision as it stood at earlier times.

The console plots it: each comparison's difference with its always-valid interval as samples
arrived. The figures are ``experiments.history``, which runs the product's own analysis on
prefixes of the log; ``points`` bounds how many.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from gateway.api.bodies import AUTH_ERRORS, error_responses
from gateway.api.deps import get_state
from gateway.errors import NotFoundError, StoreError, StoreUnavailableError
from gateway.experiments.history import MAX_POINTS, history
from gateway.state import GatewayState

router = APIRouter()


@router.get(
    "/v1/experiments/{name}/history", responses=error_responses(400, 404, 503, *AUTH_ERRORS)
)
async def get_history(
    name: str,
    state: Annotated[GatewayState, Depends(get_state)],
    points: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 30,
) -> dict[str, Any]:
    route = state.router.get(name)
    if route is None:
        raise NotFoundError(f"No route named '{name}'.", param="route", code="route_not_found")
    await state.events.flush()
    try:
        events = await asyncio.to_thread(state.events.store.events, name)
        feedback = await asyncio.to_thread(state.events.store.feedback, name)
    except StoreError as exc:
        raise StoreUnavailableError(
            f"The event database is unavailable: {exc}. Retry later."
        ) from exc
    promoted = route.promoted.name if route.promoted else None
    # Up to MAX_POINTS analyses: off the event loop, like the store reads.
    return await asyncio.to_thread(
        history, name, route.spec, events, feedback, points=points, promoted=promoted
    )
