"""The evaluation API that ``gateway eval --url`` drives: offline calls of one variant.

Unlike a pinned chat completion, a call here runs exactly the named variant (no fallback, no
shadow), is logged as an ``offline`` event of the run, and never counts in the route's online
experiment. The work is ``eval_backends.call_variant``, the same as in process.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.bodies import AUTH_ERRORS, error_responses, json_body, read_model
from gateway.api.deps import get_state
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evaluation.backends import call_variant, record_score, route_variants
from gateway.state import GatewayState

router = APIRouter()
_ERRORS = error_responses(404, *AUTH_ERRORS)
_BODY_ERRORS = error_responses(400, 404, 413, *AUTH_ERRORS)
_RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class EvalCallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    route: str = Field(min_length=1)
    variant: str = Field(min_length=1)
    run_id: str = Field(pattern=_RUN_ID)
    #: the chat completion request, as a client would send it to the route
    request: dict[str, Any]


class EvalScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    run_id: str = Field(pattern=_RUN_ID)
    inference_id: str = Field(min_length=1, max_length=100)
    correct: bool


@router.get("/v1/evaluations/routes/{name}", responses=_ERRORS)
async def describe_route(
    name: str, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    """The route's variants and their settings (a run refuses to resume if they changed)."""
    variants = route_variants(state, name)
    return {"route": name, "variants": {n: v.described() for n, v in variants.items()}}


@router.post(
    "/v1/evaluations/calls", responses=_BODY_ERRORS, openapi_extra=json_body(EvalCallRequest)
)
async def evaluation_call(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> dict[str, Any]:
    """One item on one variant; a failing variant is an ``error`` outcome, not an HTTP error."""
    body: EvalCallRequest = await read_model(request, EvalCallRequest)
    outcome = await call_variant(state, body.route, body.variant, body.request, body.run_id)
    return outcome.to_json()


@router.post(
    "/v1/evaluations/scores",
    status_code=201,
    responses=_BODY_ERRORS,
    openapi_extra=json_body(EvalScoreRequest),
)
async def evaluation_score(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> JSONResponse:
    """The scorer's verdict on one offline call, stored as its ``correct`` feedback."""
    body: EvalScoreRequest = await read_model(request, EvalScoreRequest)
    event = await state.events.get_event(body.inference_id)
    if event is None:
        raise NotFoundError(
            f"No inference with id '{body.inference_id}'.",
            param="inference_id",
            code="inference_not_found",
        )
    if event.source != "offline" or event.run_id != body.run_id:
        raise InvalidRequestError(
            f"Inference '{body.inference_id}' is not an offline call of run '{body.run_id}'.",
            param="inference_id",
        )
    await record_score(state.events, body.inference_id, body.correct)
    return JSONResponse({"inference_id": body.inference_id, "correct": body.correct}, 201)
