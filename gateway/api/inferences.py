"""Admin reads of the event log for the console: recent inferences, one in full, the overview.

``GET /v1/inferences`` lists events (one per attempt) newest first, filtered; ``GET
/v1/inferences/{id}`` is one inference with every attempt of its request and the feedback
joined to it; ``GET /v1/overview`` is every model, adapter and route with the last hour's
traffic and the engines' readiness. Every query is bounded (``limit``, a window), so a large
event log cannot make a page slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from gateway.api.bodies import AUTH_ERRORS, error_responses
from gateway.api.deps import get_state
from gateway.errors import NotFoundError, StoreError, StoreUnavailableError
from gateway.events.reads import EventQuery
from gateway.events.schema import as_dict
from gateway.events.traffic import summarise
from gateway.experiments.units import requests
from gateway.state import GatewayState

router = APIRouter(tags=["console"])
State = Annotated[GatewayState, Depends(get_state)]
T = TypeVar("T")

#: how far around an inference its other attempts are looked for (a request's whole life)
_ATTEMPT_WINDOW_S = 600.0
#: the overview's scan: at most this many events of the window are read
_TRAFFIC_ROWS = 50_000


class InferenceList(BaseModel):
    object: Literal["list"] = "list"
    #: events newest first, each with the feedback joined to it
    data: list[dict[str, Any]]
    limit: int


class InferenceDetail(BaseModel):
    inference: dict[str, Any]
    #: the request this attempt belongs to: assigned variant, reason, unit, totals
    request: dict[str, Any] | None
    #: every attempt of that request, in order (fallbacks included)
    attempts: list[dict[str, Any]]
    feedback: list[dict[str, Any]]


async def _read(call: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(call, *args)
    except StoreError as exc:
        raise StoreUnavailableError(
            f"The event database is unavailable: {exc}. Retry later."
        ) from exc


@router.get(
    "/v1/inferences",
    response_model=InferenceList,
    responses=error_responses(400, 503, *AUTH_ERRORS),
)
async def list_inferences(
    state: State,
    route: Annotated[str | None, Query(max_length=200)] = None,
    variant: Annotated[str | None, Query(max_length=200)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    status: Literal["ok", "error", "cancelled"] | None = None,
    source: Literal["online", "offline"] | None = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> InferenceList:
    await state.events.flush()
    query = EventQuery(
        route=route,
        variant=variant,
        target=target,
        status=status,
        source=source,
        since=since,
        until=until,
        limit=limit,
    )
    rows = await _read(state.events.store.recent_events, query)
    feedback = await _read(state.events.store.feedback_for, [r["id"] for r in rows])
    joined: dict[str, list[dict[str, Any]]] = {}
    for fb in feedback:
        joined.setdefault(fb["inference_id"], []).append(fb)
    data = [{**row, "feedback": joined.get(row["id"], [])} for row in rows]
    return InferenceList(data=data, limit=limit)


@router.get(
    "/v1/inferences/{inference_id}",
    response_model=InferenceDetail,
    responses=error_responses(404, 503, *AUTH_ERRORS),
)
async def get_inference(inference_id: str, state: State) -> InferenceDetail:
    await state.events.flush()
    event = await state.events.get_event(inference_id)
    if event is None:
        raise NotFoundError(
            f"No inference with id '{inference_id}'.",
            param="inference_id",
            code="inference_not_found",
        )
    row = await _read(state.events.store.get_event, inference_id) or as_dict(event)
    # The attempts of one request share its request_id; older rows have none and are chained
    # as the analysis chains them (units.requests), among the same key's events around it.
    near = EventQuery(
        route=row.get("route"),
        key_hash=row.get("key_hash"),
        request_id=row.get("request_id"),
        since=float(row["ts"]) - _ATTEMPT_WINDOW_S,
        until=float(row["ts"]) + _ATTEMPT_WINDOW_S,
        limit=500,
    )
    around = await _read(state.events.store.recent_events, near)
    same_key = [e for e in around if e.get("key_hash") == row.get("key_hash")]
    if not any(e["id"] == inference_id for e in same_key):
        same_key.append(row)
    by_id = {e["id"]: e for e in same_key}
    request = next((r for r in requests(same_key) if inference_id in r.ids), None)
    attempts = [by_id[i] for i in request.ids] if request else [row]
    feedback = await _read(state.events.store.feedback_for, [a["id"] for a in attempts])
    summary = None
    if request is not None:
        summary = {
            "assigned": request.assigned,
            "reason": request.reason,
            "answered_by": request.answered_by,
            "status": request.status,
            "final_id": request.id,
            "latency_ms": request.latency_ms,
            "cost": request.cost,
            "attempts": len(request.ids),
        }
    return InferenceDetail(inference=row, request=summary, attempts=attempts, feedback=feedback)


@router.get("/v1/overview", responses=error_responses(400, 503, *AUTH_ERRORS))
async def overview(
    state: State,
    window_s: Annotated[float, Query(ge=60, le=86_400, description="seconds")] = 3600,
) -> dict[str, Any]:
    """Every model (with its engine's readiness), adapter and route, and the window's traffic
    per route and per target."""
    await state.events.flush()
    now = time.time()
    rows = await _read(state.events.store.traffic, now - window_s, _TRAFFIC_ROWS)
    traffic = summarise(rows, now=now, window_s=window_s, truncated=len(rows) >= _TRAFFIC_ROWS)
    names = list(state.engines)
    health = await asyncio.gather(*(state.engines[n].health() for n in names))
    models = {
        name: {
            "upstream_model": state.engines[name].upstream_model,
            "ready": h.ready,
            "state": h.state,
            "detail": h.detail,
            # a fleet's replicas (engines/fleet.py): state, in flight, ejections, last error
            "replicas": h.extra.get("replicas"),
        }
        for name, h in zip(names, health, strict=True)
    }
    adapters = {
        a.name: {"base_model": a.base_model, "state": state.adapters.state(a.name)}
        for a in state.adapters.registry.all()
    }
    routes = {
        name: {
            "variants": {
                v: {
                    "target": variant.target,
                    "pipeline": variant.pipeline,
                    "weight": variant.weight,
                }
                for v, variant in route.variants.items()
            },
            "share": route.share(),
            "promoted": route.promoted.name if route.promoted else None,
            "experiment": route.spec.experiment is not None,
        }
        for name, route in state.router.routes.items()
    }
    return {"models": models, "adapters": adapters, "routes": routes, "traffic": traffic}
