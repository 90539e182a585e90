"""One request's way after validation: pick the variant, run it, fall back, shadow, log.

The client's ``model`` is a route (variants with weights), or a model or adapter name (served
directly, as a one-variant plan). Every attempt is one event in the event log, whether it
succeeded, failed or was cancelled (``attempt_events``); shadow runs are events marked
``shadow`` (``shadows``); a stream's bytes after its first chunk go through ``relay``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from gateway.config.routes import SamplingSpec
from gateway.config.schema import GatewayConfig
from gateway.engines.fleet import AFFINITY
from gateway.errors import (
    EngineError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    UpstreamRateLimitedError,
)
from gateway.events.capture import Capturer
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.events.schema import InferenceEvent
from gateway.protocol import ChatCompletionRequest
from gateway.routing.assignment import Assignment, Router, Variant
from gateway.routing.attempt_events import Attempt, AttemptEvents
from gateway.routing.cascade import Cascades
from gateway.routing.context import PipelineResultLike, RequestContext, Runner, deadline_exceeded
from gateway.routing.relay import close, first_chunk, relay
from gateway.routing.retries import Cooldowns, RetryBudget
from gateway.routing.shadows import Shadows
from gateway.routing.targets import Targets
from gateway.telemetry import tracing

log = logging.getLogger(__name__)

T = TypeVar("T")
#: one attempt's work once its variant is chosen: what it yields when it succeeds
AttemptRun = Callable[[Variant, Attempt, RequestContext], Awaitable[T]]


class Dispatcher:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        router: Router,
        targets: Targets,
        events: EventLog,
        metrics: Metrics,
        runner: Runner,
        budget: RetryBudget | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        """``budget`` and ``cooldowns``: shared ones (``gateway.state_store``); default: this
        process's own."""
        self.config = config
        self.router = router
        self.targets = targets
        self.events = events
        self.metrics = metrics
        self.runner = runner
        self.reliability = config.reliability
        self.budget = budget or RetryBudget(config.reliability.retry_budget)
        self.cooldowns = cooldowns or Cooldowns(
            config.reliability.cooldown_failures, config.reliability.cooldown_s
        )
        self.recorder = AttemptEvents(models=config.models, events=events, metrics=metrics)
        self.shadows = Shadows(self._run, targets.resolve, self.recorder)
        # Cascade variants run their steps through _run; capture keeps a sample of the text.
        self.cascades = Cascades(router, self._run, self._price)
        self.capture = Capturer(config.routes, events)

    # -- planning -------------------------------------------------------------------------------

    def plan(self, chat: ChatCompletionRequest, headers: Mapping[str, str]) -> Assignment:
        # An alias is another name for what it names: clients hard-coded to a provider's model
        # names reach a route or a model here unchanged.
        name = self.config.aliases.get(chat.model, chat.model)
        route = self.router.get(name)
        requested = _requested_pipeline(chat)
        if route is None:
            self.targets.resolve(name)  # 404 for an unknown name, before anything runs
            variant = Variant("", name, requested or "plain", 1.0, SamplingSpec())
            return Assignment("", variant, "direct")
        if requested is not None:
            raise InvalidRequestError(
                f"'{chat.model}' is a route: its variants choose the pipeline.",
                param="switchboard.pipeline",
            )
        return route.assign(user=chat.user, headers=headers)

    def attempts(self, assignment: Assignment) -> list[Variant]:
        route = self.router.get(assignment.route)
        if route is None or assignment.reason == "pinned":
            return [assignment.variant]
        return [assignment.variant, *route.fallbacks(assignment.variant)]

    def schedule(self, assignment: Assignment) -> list[Variant]:
        """The variants to try, in order, at most ``max_attempts``.

        The assigned variant, then its fallbacks, skipping variants that cool down; once the
        fallbacks run out, the last one is tried again. All cooling: a 503 at once.
        """
        candidates = self.attempts(assignment)
        ready = [v for v in candidates if not self.cooldowns.remaining_s(_cool_key(assignment, v))]
        if not ready:
            wait = min(self.cooldowns.remaining_s(_cool_key(assignment, v)) for v in candidates)
            raise EngineUnavailableError(
                f"'{assignment.variant.target}' failed repeatedly and cools down; "
                f"retry in {wait:.0f} s.",
                retry_after_s=max(1, round(wait)),
                code="cooling_down",
            )
        tries = self.reliability.max_attempts
        return (ready + [ready[-1]] * tries)[:tries]

    def new_context(self) -> RequestContext:
        loop = asyncio.get_running_loop()
        return RequestContext(deadline=loop.time() + self.reliability.deadline_s)

    # -- the attempt loop -----------------------------------------------------------------------

    async def _first_success(
        self,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        headers: Mapping[str, str],
        ctx: RequestContext,
        *,
        stream: bool,
        run_attempt: AttemptRun[T],
    ) -> tuple[Attempt, T]:
        """Try the schedule's variants in turn until one opens; retry only what may succeed.

        Each attempt is recorded once: by ``run_attempt`` when it succeeds, on the way out of
        its ``with`` block when it fails or is cancelled; an opened stream's, by the relay.
        """
        routed = time.perf_counter()
        # One replica for every model call of this request (a pipeline's members share their
        # prompt's prefix cache there): engines/fleet.py.
        AFFINITY.set((str(id(ctx)), chat.user))
        assignment = self.plan(chat, headers)
        self.budget.deposit()
        route = self.router.get(assignment.route)
        if route is not None:
            self.shadows.start(assignment, route.shadows(), chat, body)
        schedule = self.schedule(assignment)
        tracing.step("gateway.routing", routed, lambda: _routing_attributes(assignment, schedule))
        previous = _skipped(assignment, schedule)
        # One id for every attempt of this request (the first attempt's): the experiment
        # analysis groups a request's attempts by it (intention to treat), exactly.
        request_id: str | None = None
        for index, variant in enumerate(schedule):
            attempt = self.recorder.start(
                assignment,
                variant,
                self.targets.resolve(variant.target),
                attempt=index,
                fallback_from=previous,
                stream=stream,
                ctx=ctx,
                request_id=request_id,
            )
            request_id = attempt.request_id
            started_at = self.cooldowns.clock()
            try:
                with attempt:
                    opened = await run_attempt(variant, attempt, ctx)
            except GatewayError as exc:
                await self._outcome(assignment, variant, exc, started_at)
                last = index + 1 == len(schedule)
                same = not last and schedule[index + 1] is variant
                if not last and await self._before_retry(exc, index + 1, ctx, same):
                    previous = variant.name
                    log.warning("variant %s failed (%s); trying again", variant.name, exc.message)
                    continue
                exc.headers.update(attempt.headers())
                raise
            await self._outcome(assignment, variant, None)
            return attempt, opened
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _before_retry(
        self, error: GatewayError, attempt: int, ctx: RequestContext, same_variant: bool
    ) -> bool:
        """Whether to try again after ``error``; waits out a backoff or Retry-After first."""
        if not _retryable(error):
            return False
        wait = 0.0
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after_s is not None:
            if error.retry_after_s > self.reliability.max_retry_after_s:
                return False
            wait = error.retry_after_s
        elif same_variant:
            # The same engine again: back off a little (jittered) so a restarting engine is
            # not hammered in lockstep by every waiting request.
            wait = random.uniform(0.5, 1.0) * min(2.0, 0.1 * 2 ** (attempt - 1))
        if wait >= ctx.remaining_s() or not await self.budget.take():
            return False
        if wait:
            await asyncio.sleep(wait)
        return True

    async def _outcome(
        self,
        assignment: Assignment,
        variant: Variant,
        error: GatewayError | None,
        started_at: float | None = None,
    ) -> None:
        key = _cool_key(assignment, variant)
        if error is None:
            self.cooldowns.success(key)
        elif _retryable(error) and await self.cooldowns.failed(key, started_at):
            log.warning(
                "variant %s failed %d times in a row; it cools down for %g s",
                key, self.cooldowns.threshold, self.cooldowns.cooldown_s,
            )  # fmt: skip
            self.metrics.cooldown(assignment.route, variant.name, variant.target)

    # -- non-streaming --------------------------------------------------------------------------

    async def complete(
        self,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        headers: Mapping[str, str],
        ctx: RequestContext | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        async def run(variant: Variant, attempt: Attempt, ctx: RequestContext) -> dict[str, Any]:
            try:
                async with asyncio.timeout_at(ctx.deadline) as scope:
                    result = await self._run(variant, chat, body)
            except TimeoutError:
                if scope.expired():
                    raise deadline_exceeded(self.reliability.deadline_s) from None
                raise
            attempt.ok(result)
            return result.response

        ctx = ctx or self.new_context()
        attempt, response = await self._first_success(
            chat, body, headers, ctx, stream=False, run_attempt=run
        )
        response["switchboard"] = {**response.get("switchboard", {}), **attempt.extension()}
        self.capture.offer(attempt.event, body, response)
        return response, attempt.headers()

    async def run_variant(
        self,
        route_name: str,
        variant_name: str,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        *,
        run_id: str,
    ) -> tuple[PipelineResultLike, InferenceEvent]:
        """One offline call of one variant, by the live code path, logged as ``offline``.

        No shadows and no fallback: an evaluation measures the variant itself.
        """
        route = self.router.get(route_name)
        if route is None or variant_name not in route.variants:
            raise InvalidRequestError(f"no variant '{variant_name}' in route '{route_name}'")
        variant = route.variants[variant_name]
        assignment = Assignment(route_name, variant, "offline")
        target = self.targets.resolve(variant.target)
        with self.recorder.start(
            assignment, variant, target, source="offline", run_id=run_id
        ) as attempt:
            result = await self._run(variant, chat, body)
            event = attempt.ok(result)
            self.capture.offer(event, body, result.response)
            return result, event

    # -- streaming ------------------------------------------------------------------------------

    async def stream(
        self,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        headers: Mapping[str, str],
        ctx: RequestContext | None = None,
    ) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """Open the stream; failures before the first byte are retried or raise as HTTP errors."""
        deadline_s = self.reliability.deadline_s

        async def open_stream(
            variant: Variant, attempt: Attempt, ctx: RequestContext
        ) -> AsyncIterator[bytes]:
            target = self.targets.resolve(variant.target)
            results: list[PipelineResultLike] = []
            # The runner hands over its result (answer, votes, calls) when the stream ends.
            chunks = (self.cascades.get(variant) or self.runner).stream(
                variant.pipeline, target, _apply(body, variant.params), chat,
                on_result=results.append,
            )  # fmt: skip
            try:
                first = await first_chunk(chunks, ctx, deadline_s)
            except asyncio.CancelledError:
                await close(chunks)
                raise
            attempt.first_byte()
            gap_s = self.reliability.stream_gap_s
            capture = self.capture.stream(attempt.route, body)
            return relay(
                attempt, first, chunks, results, ctx,
                gap_s=gap_s, deadline_s=deadline_s, capture=capture,
            )  # fmt: skip

        ctx = ctx or self.new_context()
        attempt, chunks = await self._first_success(
            chat, body, headers, ctx, stream=True, run_attempt=open_stream
        )
        return chunks, attempt.headers()

    # -- running one variant --------------------------------------------------------------------

    async def _run(
        self, variant: Variant, chat: ChatCompletionRequest, body: dict[str, Any]
    ) -> PipelineResultLike:
        target = self.targets.resolve(variant.target)
        merged = _apply(body, variant.params)
        runner = self.cascades.get(variant) or self.runner
        return await runner.complete(variant.pipeline, target, merged, chat)

    def _price(self, variant: Variant, usage: Mapping[str, int]) -> float | None:
        model = self.targets.resolve(variant.target).base_model
        return self.recorder.cost(model, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def drain_shadows(self, timeout_s: float = 10.0) -> None:
        await self.shadows.drain(timeout_s)

    def record_rejection(self, model: str | None, error: GatewayError, started: float) -> str:
        """Log a request refused before any variant ran (bad input, unknown model, a cooling
        route); a route's name is kept, so its error rate counts the refusal."""
        route = model if model is not None and self.router.get(model) is not None else None
        return self.recorder.reject(model, error, started, route=route)


def _requested_pipeline(chat: ChatCompletionRequest) -> str | None:
    extension = getattr(chat, "switchboard", None)
    if extension is None:
        return None
    pipeline = getattr(extension, "pipeline", None)
    if pipeline is None and isinstance(extension, dict):
        pipeline = extension.get("pipeline")
    return str(pipeline) if pipeline is not None else None


def _apply(body: dict[str, Any], params: SamplingSpec) -> dict[str, Any]:
    """The variant's sampling settings over the client's."""
    overrides = params.model_dump(exclude_none=True)
    merged = {**body, **overrides}
    if "max_tokens" in overrides:
        merged.pop("max_completion_tokens", None)
    return merged


def _retryable(exc: GatewayError) -> bool:
    return isinstance(exc, EngineError) and exc.retryable


def _routing_attributes(assignment: Assignment, schedule: list[Variant]) -> dict[str, str]:
    """The routing span's: what was chosen, how, and what runs first."""
    return {
        "switchboard.route": assignment.route,
        "switchboard.variant": assignment.variant.name,
        "switchboard.assignment": assignment.reason,
        "switchboard.target": schedule[0].target,
    }


def _cool_key(assignment: Assignment, variant: Variant) -> str:
    return f"{assignment.route}/{variant.name}" if assignment.route else variant.target


def _skipped(assignment: Assignment, schedule: list[Variant]) -> str | None:
    """The assigned variant's name when it cools down and a fallback goes first."""
    return assignment.variant.name if schedule[0] is not assignment.variant else None
