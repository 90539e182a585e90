"""POST /v1/feedback: metric values joined to inferences by their id.

One row per (inference, metric): posting again replaces the value (the last one wins), so a
client that retries, or replays, never counts twice. Values are bounded (``MAX_FEEDBACK_VALUE``)
so no sum of them overflows, and each key's request rate limits its feedback too (a bucket of
its own, the size of the key's ``requests_per_minute``, so feedback never eats inference).
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.admission.ratelimit import Quota
from gateway.api.access import authenticate
from gateway.api.bodies import AUTH_ERRORS, error_responses, json_body, read_model
from gateway.api.deps import get_state
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from gateway.events.schema import FeedbackRow, InferenceEvent
from gateway.events.sql import MAX_FEEDBACK_VALUE
from gateway.protocol import Feedback, FeedbackRequest
from gateway.state import GatewayState

router = APIRouter()

COMMENT = "comment"
#: the longest comment kept
MAX_COMMENT_CHARS = 10_000


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=Feedback,
    responses=error_responses(400, 404, 413, 429, 503, *AUTH_ERRORS),
    openapi_extra=json_body(FeedbackRequest),
)
async def create_feedback(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> JSONResponse:
    await _admit(state, request)
    feedback = await read_model(request, FeedbackRequest)
    try:
        event = await state.events.get_event(feedback.inference_id, strict=True)
    except StoreError as exc:
        raise StoreUnavailableError(f"The event database cannot be read now: {exc}") from None
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
    try:
        await state.events.add_feedback(row)  # committed, or fsynced to the spool
    except OSError as exc:  # neither the database nor the spool's disk takes it
        raise StoreUnavailableError(f"Feedback cannot be stored now: {exc}") from None
    body = Feedback(
        id=row.id,
        inference_id=feedback.inference_id,
        name=feedback.name,
        value=feedback.value,
        created=int(row.ts),
    )
    return JSONResponse(body.model_dump(), status_code=201)


async def _admit(state: GatewayState, request: Request) -> None:
    """The key's request rate, in a feedback bucket of its own: 429 with Retry-After."""
    key = authenticate(state, request, "feedback")  # admitted already: this names the key
    limits = state.config.limits
    per_minute = key.quota.requests_per_minute if key and key.quota else None
    per_minute = per_minute or limits.requests_per_minute
    if per_minute:
        client = request.client.host if request.client else "unknown"
        name = key.name if key else f"address:{client}"
        await state.limiter.acquire(f"feedback:{name}", Quota(requests_per_minute=per_minute))


def _checked_value(
    state: GatewayState, event: InferenceEvent, feedback: FeedbackRequest
) -> float | None:
    """The numeric value to store, after checking the name and type against the route."""
    if feedback.name == COMMENT:
        if feedback.kind != "comment":
            raise InvalidRequestError("'comment' feedback takes a string value.", param="value")
        if isinstance(feedback.value, str) and len(feedback.value) > MAX_COMMENT_CHARS:
            raise InvalidRequestError(
                f"A comment holds at most {MAX_COMMENT_CHARS} characters.", param="value"
            )
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
    value = float(feedback.value)
    if not (math.isfinite(value) and abs(value) <= MAX_FEEDBACK_VALUE):
        raise InvalidRequestError(
            f"Feedback 'value' must be a finite number within +-{MAX_FEEDBACK_VALUE:g}; "
            f"got {value:g}.",
            param="value",
        )
    return value
