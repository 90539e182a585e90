"""GET /metrics in Prometheus' text format (docs/operations.md lists every metric)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import get_state
from gateway.state import GatewayState

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(state: Annotated[GatewayState, Depends(get_state)]) -> Response:
    # Engine health and the state read at scrape time (adapters, cooldowns, in flight) are
    # taken now, so that between scrapes the hot path pays for none of it.
    await state.metrics.refresh(state)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
