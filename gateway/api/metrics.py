"""GET /metrics in Prometheus' text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import get_state
from gateway.state import GatewayState

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(state: Annotated[GatewayState, Depends(get_state)]) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
