"""POST /v1/feedback: metric values joined to inferences by their id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.api.bodies import AUTH_ERRORS, error_responses, json_body, read_model
from gateway.api.deps import get_state
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.protocol import Feedback, FeedbackRequest
from gateway.state import GatewayState

router = APIRouter()

COMMENT = "comment"


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=Feedback,
    responses=error_responses(400, 404, 413, *AUTH_ERRORS),
    openapi_extra=json_body(FeedbackRequest),
)
async def create_feedback(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> JSONResponse:
    feedback = await read_model(request, FeedbackRequest)
    event = await state.events.get_event(feedback.inference_id)
    if event is None:
        raise NotFoundError(
            f"No inference with id '{feedback.inference_id}'. Use the id from the "
            "x-switchboard-inference-id header or the response's switchboard object.",
            param="inference_id",
            code="inference_not_found",
        )
    value = _checked_value(state, event, feedback)
    row = FeedbackRow.new(
        inference_id=feedback.inference_id,
        name=feedback.name,
        kind=feedback.kind,
        value=value,
        text=feedback.value if isinstance(feedback.value, str) else None,
    )
    await state.events.add_feedback(row)
    body = Feedback(
        id=row.id,
        inference_id=feedback.inference_id,
        name=feedback.name,
        value=feedback.value,
        created=int(row.ts),
    )
    return JSONResponse(body.model_dump(), status_code=201)


def _checked_value(
    state: GatewayState, event: InferenceEvent, feedback: FeedbackRequest
) -> float | None:
    """The numeric value to store, after checking the name and type against the route."""
    if feedback.name == COMMENT:
        if feedback.kind != "comment":
            raise InvalidRequestError("'comment' feedback takes a string value.", param="value")
        return None
    route = state.config.routes.get(event.route or "")
    metrics = route.experiment.metrics if route and route.experiment else {}
    metric = metrics.get(feedback.name)
    if metric is None:
        declared = ", ".join(metrics) or "none"
        raise InvalidRequestError(
            f"'{feedback.name}' is not a metric of route '{event.route}' "
            f"(declared: {declared}; 'comment' takes free text).",
            param="name",
        )
    if metric.type != feedback.kind:
        raise InvalidRequestError(
            f"Metric '{feedback.name}' is {metric.type}; got a {feedback.kind} value.",
            param="value",
        )
    return float(feedback.value)
