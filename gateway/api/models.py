"""GET /v1/models and /v1/models/{id}: every name a client may call as ``model``.

Base models, adapters and routes alike: a route is a model to its clients. Switchboard's
extension field ``switchboard`` says which kind each is, and a route's variants.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    #: Switchboard's extension: ``kind`` (model, adapter, route) and, for a route, its variants
    switchboard: dict[str, Any] | None = None


class ServedModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ServedModelCard]


def _cards(state: GatewayState) -> dict[str, ServedModelCard]:
    # ``created`` is when this gateway started serving the name: the same on every request.
    created = int(state.started_at)
    cards = {
        name: ServedModelCard(
            id=name, created=created, root=engine.upstream_model, switchboard={"kind": "model"}
        )
        for name, engine in state.engines.items()
    }
    adapters = state.adapters
    for adapter in adapters.registry.all():
        adapter_state = adapters.state(adapter.name)
        if adapter_state == "unloaded":
            continue  # taken out of service by an admin: not callable, so not listed
        cards[adapter.name] = ServedModelCard(
            id=adapter.name,
            created=created,
            root=adapter.name,
            parent=adapter.base_model,
            loaded=adapter_state == "loaded",
            switchboard={"kind": "adapter"},
        )
    for name, route in state.router.routes.items():
        variants = {
            variant.name: {
                "target": variant.target,
                "pipeline": variant.pipeline,
                "weight": variant.weight,
            }
            for variant in route.variants.values()
        }
        promoted = route.promoted.name if route.promoted else None
        cards[name] = ServedModelCard(
            id=name,
            created=created,
            switchboard={"kind": "route", "variants": variants, "promoted": promoted},
        )
    for alias, name in state.config.aliases.items():
        if name in cards:
            card = cards[name].model_copy(deep=True)
            card.id = alias
            card.switchboard = {**(card.switchboard or {}), "alias_of": name}
            cards[alias] = card
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
