"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gateway.api.deps import GatewayState, get_state
from gateway.errors import ModelNotFoundError
from gateway.protocol import ErrorResponse, ModelCard, ModelList

router = APIRouter()


def _cards(state: GatewayState) -> dict[str, ModelCard]:
    return {
        name: ModelCard(id=name, root=engine.upstream_model)
        for name, engine in state.engines.items()
    }


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: Annotated[GatewayState, Depends(get_state)]) -> ModelList:
    return ModelList(data=list(_cards(state).values()))


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse}},
)
async def retrieve_model(
    model_id: str, state: Annotated[GatewayState, Depends(get_state)]
) -> ModelCard:
    card = _cards(state).get(model_id)
    if card is None:
        raise ModelNotFoundError(model_id)
    return card
