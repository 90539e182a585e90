"""Admin endpoints for adapters: list, show, load, unload.

Names in paths are adapter names, checked against ``ADAPTER_NAME`` and looked up in the
registry folders; ``{name}`` never matches a slash, so a path can never reach the filesystem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from gateway.adapters.registry import check_name
from gateway.adapters.serving import AdapterServing, AdapterState
from gateway.api.bodies import AUTH_ERRORS, error_responses
from gateway.api.deps import get_state
from gateway.errors import AdapterNotFoundError
from gateway.state import GatewayState

router = APIRouter(tags=["adapters"])

_SHOW_ERRORS = error_responses(400, 404, *AUTH_ERRORS)
# A POST may carry a body (ignored), so it may be over the body limit too.
_LOAD_ERRORS = error_responses(400, 404, 413, 502, 503, *AUTH_ERRORS)


class AdapterInfo(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    base_model: str
    #: loaded (in vLLM now), available (loads on first use), unloaded (out of service)
    state: AdapterState
    loaded: bool
    description: str
    rank: int
    alpha: int
    target_modules: list[str]
    created: str
    training: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    #: seconds the last load into vLLM took, when this gateway loaded it
    last_load_s: float | None


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    #: adapter folders that could not be registered, with the fix for each
    problems: list[str]


def get_adapters(state: Annotated[GatewayState, Depends(get_state)]) -> AdapterServing:
    return state.adapters


Adapters = Annotated[AdapterServing, Depends(get_adapters)]


def describe(adapters: AdapterServing, name: str) -> AdapterInfo:
    adapter = adapters.registry.get(name)
    if adapter is None:
        raise AdapterNotFoundError(name)
    manifest = adapter.manifest
    state = adapters.state(name)
    return AdapterInfo(
        id=name,
        base_model=manifest.base_model,
        state=state,
        loaded=state == "loaded",
        description=manifest.description,
        rank=manifest.rank,
        alpha=manifest.alpha,
        target_modules=manifest.target_modules,
        created=manifest.created,
        training=manifest.training.model_dump() if manifest.training else None,
        evaluation=manifest.evaluation,
        last_load_s=adapters.load_seconds.get(name),
    )


@router.get("/v1/adapters", response_model=AdapterList, responses=error_responses(*AUTH_ERRORS))
async def list_adapters(adapters: Adapters) -> AdapterList:
    # Listing reads the registry folders again, so a folder added since start shows up.
    problems = adapters.rescan()
    data = [describe(adapters, a.name) for a in adapters.registry.all()]
    return AdapterList(data=data, problems=problems)


@router.get("/v1/adapters/{name}", response_model=AdapterInfo, responses=_SHOW_ERRORS)
async def show_adapter(name: str, adapters: Adapters) -> AdapterInfo:
    check_name(name)
    if name not in adapters.registry:
        adapters.registry.refresh(name)
    return describe(adapters, name)


@router.post("/v1/adapters/{name}/load", response_model=AdapterInfo, responses=_LOAD_ERRORS)
async def load_adapter(name: str, adapters: Adapters) -> AdapterInfo:
    await adapters.load(name)
    return describe(adapters, name)


@router.post("/v1/adapters/{name}/unload", response_model=AdapterInfo, responses=_LOAD_ERRORS)
async def unload_adapter(name: str, adapters: Adapters) -> AdapterInfo:
    await adapters.unload(name)
    return describe(adapters, name)
