"""GET /health (the process is up) and GET /ready (every engine answers)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.api.deps import get_state
from gateway.state import GatewayState

router = APIRouter()


class EngineState(BaseModel):
    ready: bool
    #: e.g. ready, starting, restarting, unreachable
    state: str
    detail: str | None = None
    #: a fleet's replicas (engines/fleet.py ``Replica.snapshot``): url, state, outstanding,
    #: served, failures, ejections, ejected_for_s, last_error
    replicas: list[dict[str, Any]] | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    engines: dict[str, EngineState]


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Readiness,
        "description": "Some engine is not ready; each engine's state is given",
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
    }
}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, responses=_NOT_READY)
async def ready(state: Annotated[GatewayState, Depends(get_state)]) -> JSONResponse:
    names = list(state.engines)
    results = await asyncio.gather(*(state.engines[n].health() for n in names))
    engines: dict[str, Any] = {
        name: {
            "ready": h.ready,
            "state": h.state,
            **({"detail": h.detail} if h.detail else {}),
            **({"replicas": h.extra["replicas"]} if "replicas" in h.extra else {}),
        }
        for name, h in zip(names, results, strict=True)
    }
    if all(h.ready for h in results):
        return JSONResponse({"status": "ready", "engines": engines})
    return JSONResponse(
        {"status": "not_ready", "engines": engines}, status_code=503, headers={"Retry-After": "5"}
    )
