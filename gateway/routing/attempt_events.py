"""The event of each attempt, and of each refused request: the one place they are built.

An ``Attempt`` is one try of one variant (a live attempt, a shadow or an offline call). It keeps
its start time (never in the row) and records its ``InferenceEvent`` to the metrics and the
event log exactly once, however it ends: ``ok`` with the result, or, used as a context manager,
an error or a cancellation on the way out. Whatever comes later is ignored: a stream that
failed midway is also closed by its client, and must not be logged twice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from gateway.config.schema import ModelSpec
from gateway.engines.target import Target
from gateway.errors import EngineError, GatewayError
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.events.schema import InferenceEvent
from gateway.routing.assignment import Assignment, Variant
from gateway.routing.context import PipelineResultLike, RequestContext
from gateway.telemetry import tracing

#: the longest error message kept in a row
MAX_ERROR_CHARS = 1000
#: an attempt's status until it ends (never recorded)
PENDING = "pending"


def new_inference_id() -> str:
    return f"inf-{secrets.token_hex(16)}"  # 128 random bits, as uuid4, at half its cost


class AttemptEvents:
    """Starts attempts and records their events (and refusals) to the metrics and the log."""

    def __init__(
        self, *, models: Mapping[str, ModelSpec], events: EventLog, metrics: Metrics
    ) -> None:
        self.models = models
        self.events = events
        self.metrics = metrics

    def start(
        self,
        assignment: Assignment,
        variant: Variant,
        target: Target,
        *,
        attempt: int = 0,
        fallback_from: str | None = None,
        stream: bool = False,
        shadow: bool = False,
        ctx: RequestContext | None = None,
        source: str = "online",
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> Attempt:
        """Start timing one attempt; ``ctx`` (a live request's) gets the tokens it used.

        ``request_id``: the client request's, shared by its attempts (the dispatcher passes
        the first attempt's); None starts a new request whose id is this attempt's own.
        """
        inference_id = new_inference_id()
        row = InferenceEvent(
            id=inference_id,
            ts=time.time(),
            route=assignment.route or None,
            variant=variant.name or None,
            assignment="shadow" if shadow else assignment.reason,
            model=target.base_model,
            adapter=target.adapter,
            pipeline=variant.pipeline,
            key_hash=assignment.key_hash,
            shadow=shadow,
            attempt=attempt,
            fallback_from=fallback_from,
            stream=stream,
            status=PENDING,
            source=source,
            run_id=run_id,
            request_id=request_id or inference_id,
        )
        return Attempt(self, row, ctx)

    def reject(
        self, model: str | None, error: GatewayError, started: float, route: str | None = None
    ) -> str:
        """Log a request refused before any variant ran (bad input, unknown model)."""
        event = InferenceEvent(
            id=new_inference_id(),
            ts=time.time(),
            route=route,
            model=model,
            status="error",
            http_status=error.status_code,
            error_code=error.code,
            error_message=error.message[:MAX_ERROR_CHARS],
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        self.record(event)
        return event.id

    def record(self, event: InferenceEvent) -> None:
        self.metrics.observe(event)
        tracing.record_event(event, self.events.record)  # in a span when traced

    def cost(self, model: str, prompt: int | None, completion: int | None) -> float | None:
        spec = self.models.get(model)
        return None if spec is None else spec.pricing.cost(prompt, completion)


class Attempt:
    """One try of one variant, from its start until its event is recorded (once)."""

    __slots__ = ("_ctx", "_events", "_row", "_t0", "event")

    def __init__(
        self, events: AttemptEvents, row: InferenceEvent, ctx: RequestContext | None
    ) -> None:
        self._events = events
        #: the row as far as it is known at the start; recorded when the attempt ends
        self._row = row
        self._ctx = ctx
        self._t0 = time.perf_counter()
        #: the recorded row; None until the attempt has ended
        self.event: InferenceEvent | None = None

    # -- what the client is told ----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._row.id

    @property
    def request_id(self) -> str | None:
        return self._row.request_id

    def headers(self) -> dict[str, str]:
        row = self._row
        headers = {"x-switchboard-inference-id": row.id}
        if row.route:
            headers["x-switchboard-route"] = row.route
            headers["x-switchboard-variant"] = str(row.variant)
        return headers

    def extension(self) -> dict[str, Any]:
        """The response's ``switchboard`` object."""
        row = self._row
        return {
            "inference_id": row.id,
            "route": row.route,
            "variant": row.variant,
            "pipeline": row.pipeline,
        }

    # -- how it ends ----------------------------------------------------------------------------

    @property
    def route(self) -> str | None:
        return self._row.route

    def first_byte(self) -> None:
        self._row.ttft_ms = (time.perf_counter() - self._t0) * 1000

    def chunk_gap(self, seconds: float) -> None:
        """One gap between two chunks of the stream, for the metrics (the relay measures it)."""
        self._events.metrics.chunk_gap(self._row, seconds)

    def ok(
        self, result: PipelineResultLike | None, usage: Mapping[str, int] | None = None
    ) -> InferenceEvent:
        """Record success; ``usage`` overrides the result's (a stream's, read from its tail)."""
        if self.event is not None:
            return self.event
        event = self._end("ok", 200)
        if usage is None:
            usage = result.usage if result is not None else {}
        event.prompt_tokens = usage.get("prompt_tokens")
        event.completion_tokens = usage.get("completion_tokens")
        if result is not None:
            event.answer = result.answer
            event.votes = result.votes or None
            event.calls = result.calls
        else:
            event.calls = 1  # a pass-through stream that reported no result: one engine call
        if event.model is not None:
            event.cost = self._events.cost(
                event.model, event.prompt_tokens, event.completion_tokens
            )
        steps = getattr(result, "steps", None)
        if steps:  # a cascade (routing/cascade.py): its steps may run on several models
            event.steps, event.cascade_step = steps, getattr(result, "cascade_step", None)
            event.cost = getattr(result, "cost", event.cost)
        if self._ctx is not None:
            self._ctx.tokens += (event.prompt_tokens or 0) + (event.completion_tokens or 0)
        self._events.record(event)
        return event

    def failed(self, error: GatewayError) -> None:
        if self.event is not None:
            return
        event = self._end("error", error.status_code)
        event.error_code = error.code
        event.error_message = error.message[:MAX_ERROR_CHARS]
        self._events.record(event)

    def cancelled(self) -> None:
        if self.event is not None:
            return
        self._events.record(self._end("cancelled", 499))

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record a failure or a cancellation on the way out; the exception goes on."""
        if exc is None or self.event is not None:
            return
        if isinstance(exc, GatewayError):
            self.failed(exc)
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.cancelled()  # the client went away, or the request was cancelled
        elif isinstance(exc, Exception):  # a bug: logged as the engine's failure, not lost
            self.failed(EngineError(f"{type(exc).__name__}: {exc}"))

    def _end(self, status: str, http_status: int) -> InferenceEvent:
        event = self.event = self._row
        event.status = status
        event.http_status = http_status
        event.latency_ms = (time.perf_counter() - self._t0) * 1000
        return event
