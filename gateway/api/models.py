"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from gateway.api.bodies import AUTH_ERRORS, error_responses
from gateway.api.deps import get_state
from gateway.errors import ModelNotFoundError
from gateway.protocol import ModelCard
from gateway.state import GatewayState

router = APIRouter()


class ServedModelCard(ModelCard):
    """OpenAI's model object; for an adapter also whether vLLM has it loaded now."""

    loaded: bool | None = None


class ServedModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ServedModelCard]


def _cards(state: GatewayState) -> dict[str, ServedModelCard]:
    cards = {
        name: ServedModelCard(id=name, root=engine.upstream_model)
        for name, engine in state.engines.items()
    }
    adapters = state.adapters
    if adapters is not None:
        for adapter in adapters.registry.all():
            adapter_state = adapters.state(adapter.name)
            if adapter_state == "unloaded":
                continue  # taken out of service by an admin: not callable, so not listed
            cards[adapter.name] = ServedModelCard(
                id=adapter.name,
                root=adapter.name,
                parent=adapter.base_model,
                loaded=adapter_state == "loaded",
            )
    return cards


@router.get("/v1/models", response_model=ServedModelList, responses=error_responses(*AUTH_ERRORS))
async def list_models(state: Annotated[GatewayState, Depends(get_state)]) -> ServedModelList:
    return ServedModelList(data=list(_cards(state).values()))


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ServedModelCard,
    responses=error_responses(404, *AUTH_ERRORS),
)
async def retrieve_model(
    model_id: str, state: Annotated[GatewayState, Depends(get_state)]
) -> ServedModelCard:
    card = _cards(state).get(model_id)
    if card is None:
        raise ModelNotFoundError(model_id)
    return card
