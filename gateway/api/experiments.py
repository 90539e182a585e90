"""The experiments' admin API: the analysis, and acting on it (experiments/promotion.py).

``GET /v1/experiments/{route}`` evaluates the decision and applies the automatic action the
route's experiment declares (``on_decision``, ``on_guardrail_breach``); ``POST .../promote``
sends all traffic to one variant; ``POST .../undo`` undoes the current promotion or rollback.
Every action is recorded and listed in the analysis as ``actions``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.bodies import AUTH_ERRORS, error_responses, json_body, read_model
from gateway.api.deps import get_state
from gateway.errors import NotFoundError, StoreError, StoreUnavailableError
from gateway.experiments.promotion import Promotions
from gateway.protocol import PromoteRequest
from gateway.routing.assignment import Route
from gateway.state import GatewayState

router = APIRouter()
T = TypeVar("T")


class UndoRequest(BaseModel):
    """The body of ``POST /v1/experiments/{route}/undo`` (optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(default="undone through the admin API", min_length=1, max_length=1000)


def _route(state: GatewayState, name: str) -> Route:
    route = state.router.get(name)
    if route is None:
        raise NotFoundError(f"No route named '{name}'.", param="route", code="route_not_found")
    return route


async def _in_store(call: Callable[[], T]) -> T:
    """A store call off the event loop; an outage is a 503 the client may retry."""
    try:
        return await asyncio.to_thread(call)
    except StoreError as exc:
        raise StoreUnavailableError(
            f"The event database is unavailable: {exc}. Retry later."
        ) from exc


@router.get("/v1/experiments/{name}", responses=error_responses(404, 503, *AUTH_ERRORS))
async def get_experiment(
    name: str, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    route = _route(state, name)
    await state.events.flush()
    promotions = Promotions(state.events.store, state.router)
    return await _in_store(lambda: promotions.report(name, route.spec))


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
    promotions = Promotions(state.events.store, state.router)
    action = await _in_store(lambda: promotions.promote(name, route.spec, body.variant))
    return {
        "route": name,
        "promoted": body.variant,
        "share": route.share(),
        "action": action.as_dict(),
    }


@router.post(
    "/v1/experiments/{name}/undo",
    responses=error_responses(400, 404, 413, 503, *AUTH_ERRORS),
    openapi_extra=json_body(UndoRequest),
)
async def undo(
    name: str, request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    route = _route(state, name)
    body = await read_model(request, UndoRequest) if await request.body() else UndoRequest()
    promotions = Promotions(state.events.store, state.router)
    action = await _in_store(lambda: promotions.undo(name, reason=body.reason))
    return {"route": name, "promoted": None, "share": route.share(), "action": action.as_dict()}
