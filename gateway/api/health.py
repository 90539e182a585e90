"""GET /health (the process is up) and GET /ready (every engine answers)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from gateway.api.deps import GatewayState, get_state

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: Annotated[GatewayState, Depends(get_state)]) -> JSONResponse:
    names = list(state.engines)
    results = await asyncio.gather(*(state.engines[n].health() for n in names))
    engines: dict[str, Any] = {
        name: {"ready": h.ready, "state": h.state, **({"detail": h.detail} if h.detail else {})}
        for name, h in zip(names, results, strict=True)
    }
    if all(h.ready for h in results):
        return JSONResponse({"status": "ready", "engines": engines})
    return JSONResponse(
        {"status": "not_ready", "engines": engines}, status_code=503, headers={"Retry-After": "5"}
    )
