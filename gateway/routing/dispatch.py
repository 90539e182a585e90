"""One request's way after validation: pick the variant, run it, fall back, shadow, log.

The client's ``model`` is a route (variants with weights), or a model or adapter name (served
directly, as a one-variant plan). Every attempt is one event in the event log, whether it
succeeded, failed or was cancelled; shadow runs are events marked ``shadow``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.config.schema import GatewayConfig, SamplingSpec
from gateway.engines.target import Target
from gateway.errors import (
    DeadlineExceededError,
    EngineError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    StreamStalledError,
    UpstreamRateLimitedError,
)
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.protocol import ChatCompletionRequest
from gateway.routing.assignment import Assignment, Router, Variant
from gateway.routing.context import RequestContext
from gateway.routing.retries import Cooldowns, RetryBudget
from gateway.routing.targets import Targets

log = logging.getLogger(__name__)

MAX_SHADOWS_IN_FLIGHT = 16
_TAIL_BYTES = 4096


class PipelineResultLike(Protocol):
    response: dict[str, Any]
    answer: str | None
    votes: dict[str, int]
    calls: int
    usage: dict[str, int]


class Runner(Protocol):
    async def complete(
        self, pipeline: str, target: Target, body: dict[str, Any], chat: ChatCompletionRequest
    ) -> PipelineResultLike: ...

    def stream(
        self,
        pipeline: str,
        target: Target,
        body: dict[str, Any],
        chat: ChatCompletionRequest,
        *,
        on_result: Callable[[PipelineResultLike], None] | None = None,
    ) -> AsyncIterator[bytes]: ...


@dataclass
class PlainResult:
    """What a pass-through call yields when no pipeline runner is configured."""

    response: dict[str, Any]
    answer: str | None = None
    votes: dict[str, int] = field(default_factory=dict)
    calls: int = 1
    usage: dict[str, int] = field(default_factory=dict)


def new_inference_id() -> str:
    return f"inf-{secrets.token_hex(16)}"  # 128 random bits, as uuid4, at half its cost


class Dispatcher:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        router: Router,
        targets: Targets,
        events: EventLog,
        metrics: Metrics,
        runner: Runner | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.targets = targets
        self.events = events
        self.metrics = metrics
        self.runner = runner
        self.reliability = config.reliability
        self.budget = RetryBudget(config.reliability.retry_budget)
        self.cooldowns = Cooldowns(
            config.reliability.cooldown_failures, config.reliability.cooldown_s
        )
        self._shadows: set[asyncio.Task[None]] = set()

    # -- planning -------------------------------------------------------------------------------

    def plan(self, chat: ChatCompletionRequest, headers: Mapping[str, str]) -> Assignment:
        route = self.router.get(chat.model)
        requested = _requested_pipeline(chat)
        if route is None:
            self.targets.resolve(chat.model)  # 404 for an unknown name, before anything runs
            variant = Variant("", chat.model, requested or "plain", 1.0, SamplingSpec())
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
        if wait >= ctx.remaining_s() or not self.budget.withdraw():
            return False
        if wait:
            await asyncio.sleep(wait)
        return True

    def _outcome(
        self, assignment: Assignment, variant: Variant, error: GatewayError | None
    ) -> None:
        key = _cool_key(assignment, variant)
        if error is None:
            self.cooldowns.success(key)
        elif _retryable(error) and self.cooldowns.failure(key):
            log.warning(
                "variant %s failed %d times in a row; it cools down for %g s",
                key, self.cooldowns.threshold, self.cooldowns.cooldown_s,
            )  # fmt: skip

    # -- non-streaming --------------------------------------------------------------------------

    async def complete(
        self,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        headers: Mapping[str, str],
        ctx: RequestContext | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        ctx = ctx or self.new_context()
        assignment = self.plan(chat, headers)
        self.budget.deposit()
        self._start_shadows(assignment, chat, body)
        schedule = self.schedule(assignment)
        previous = _skipped(assignment, schedule)
        for attempt, variant in enumerate(schedule):
            event = self._event(assignment, variant, attempt, previous, stream=False)
            try:
                result = await self._attempt(variant, chat, body, ctx)
            except GatewayError as exc:
                self._finish(event, error=exc, ctx=ctx)
                self._outcome(assignment, variant, exc)
                last = attempt + 1 == len(schedule)
                same = not last and schedule[attempt + 1] is variant
                if not last and await self._before_retry(exc, attempt + 1, ctx, same):
                    previous = variant.name
                    log.warning("variant %s failed (%s); trying again", variant.name, exc.message)
                    continue
                exc.headers.update(_headers(event))
                raise
            except asyncio.CancelledError:
                self._finish(event, cancelled=True, ctx=ctx)
                raise
            self._finish(event, result=result, ctx=ctx)
            self._outcome(assignment, variant, None)
            response = result.response
            response["switchboard"] = {**response.get("switchboard", {}), **_extension(event)}
            return response, _headers(event)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(
        self,
        variant: Variant,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        ctx: RequestContext,
    ) -> PipelineResultLike:
        try:
            async with asyncio.timeout_at(ctx.deadline) as scope:
                return await self._run(variant, chat, body)
        except TimeoutError:
            if scope.expired():
                raise self._deadline_error() from None
            raise

    def _deadline_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"The request did not finish within its deadline of {self.reliability.deadline_s:g} s."
        )

    async def run_variant(
        self,
        route_name: str,
        variant_name: str,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        *,
        run_id: str,
    ) -> tuple[PipelineResultLike, dict[str, Any]]:
        """One offline call of one variant, by the live code path, logged as ``offline``.

        No shadows and no fallback: an evaluation measures the variant itself.
        """
        route = self.router.get(route_name)
        if route is None or variant_name not in route.variants:
            raise InvalidRequestError(f"no variant '{variant_name}' in route '{route_name}'")
        variant = route.variants[variant_name]
        assignment = Assignment(route_name, variant, "offline")
        event = self._event(assignment, variant, 0, None, stream=False)
        event.update(source="offline", run_id=run_id)
        try:
            result = await self._run(variant, chat, body)
        except GatewayError as exc:
            self._finish(event, error=exc)
            raise
        except asyncio.CancelledError:
            self._finish(event, cancelled=True)
            raise
        self._finish(event, result=result)
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
        ctx = ctx or self.new_context()
        assignment = self.plan(chat, headers)
        self.budget.deposit()
        self._start_shadows(assignment, chat, body)
        schedule = self.schedule(assignment)
        previous = _skipped(assignment, schedule)
        for attempt, variant in enumerate(schedule):
            event = self._event(assignment, variant, attempt, previous, stream=True)
            results: list[PipelineResultLike] = []
            chunks = self._open_stream(variant, chat, body, results)
            try:
                first = await self._first_chunk(chunks, ctx)
            except GatewayError as exc:
                self._finish(event, error=exc, ctx=ctx)
                self._outcome(assignment, variant, exc)
                last = attempt + 1 == len(schedule)
                same = not last and schedule[attempt + 1] is variant
                if not last and await self._before_retry(exc, attempt + 1, ctx, same):
                    previous = variant.name
                    log.warning("variant %s failed (%s); trying again", variant.name, exc.message)
                    continue
                exc.headers.update(_headers(event))
                raise
            except asyncio.CancelledError:
                self._finish(event, cancelled=True, ctx=ctx)
                await _close(chunks)
                raise
            event["ttft_ms"] = (time.perf_counter() - event["_t0"]) * 1000
            self._outcome(assignment, variant, None)
            return self._relay(event, first, chunks, results, ctx), _headers(event)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _first_chunk(self, chunks: AsyncIterator[bytes], ctx: RequestContext) -> bytes:
        try:
            async with asyncio.timeout_at(ctx.deadline) as scope:
                return await anext(chunks)
        except StopAsyncIteration:
            raise EngineError("the engine closed the stream without data") from None
        except TimeoutError:
            if scope.expired():
                raise self._deadline_error() from None
            raise

    async def _relay(
        self,
        event: dict[str, Any],
        first: bytes,
        chunks: AsyncIterator[bytes],
        results: list[PipelineResultLike],
        ctx: RequestContext,
    ) -> AsyncIterator[bytes]:
        """Pass bytes through; a failure or a stall midway ends with an error event, no [DONE]."""
        tail = b""
        gap = self.reliability.stream_gap_s
        loop = asyncio.get_running_loop()
        chunk = first
        try:
            while True:
                if _INBAND_ERROR in chunk:
                    # The engine failed midway and said so in-band (vLLM does): pass its error
                    # event on, but not the [DONE] after it, and log the attempt as failed.
                    head, error = _split_inband_error(chunk)
                    self._finish(event, error=error, ctx=ctx)
                    yield head
                    return
                tail = (tail + chunk)[-_TAIL_BYTES:]
                yield chunk
                # Each wait is bounded by the gap limit and the request's deadline; the yield
                # stays outside, so a slow client is never mistaken for a stalled engine.
                stall_at = loop.time() + gap
                try:
                    async with asyncio.timeout_at(min(stall_at, ctx.deadline)) as scope:
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not scope.expired():
                        raise
                    if stall_at <= ctx.deadline:
                        raise StreamStalledError(
                            f"The engine sent nothing for {gap:g} s; the stream was ended."
                        ) from None
                    raise self._deadline_error() from None
        except GatewayError as exc:
            self._finish(event, error=exc, ctx=ctx)
            yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: closing ``chunks`` below cancels the upstream request.
            self._finish(event, cancelled=True, ctx=ctx)
            raise
        else:
            result = results[0] if results else PlainResult({})
            if not result.usage:
                result.usage = _usage_from_tail(tail)
            self._finish(event, result=result, ctx=ctx)
        finally:
            await _close(chunks)

    def _open_stream(
        self,
        variant: Variant,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
        results: list[PipelineResultLike],
    ) -> AsyncIterator[bytes]:
        target = self.targets.resolve(variant.target)
        merged = _apply(body, variant.params)
        if self.runner is not None:
            # The runner hands over its result (answer, votes, calls) when the stream ends.
            return self.runner.stream(
                variant.pipeline, target, merged, chat, on_result=results.append
            )
        _require_plain(variant)
        return target.chat_stream(merged)

    # -- running one variant --------------------------------------------------------------------

    async def _run(
        self, variant: Variant, chat: ChatCompletionRequest, body: dict[str, Any]
    ) -> PipelineResultLike:
        target = self.targets.resolve(variant.target)
        merged = _apply(body, variant.params)
        if self.runner is not None:
            return await self.runner.complete(variant.pipeline, target, merged, chat)
        _require_plain(variant)
        response = await target.chat(merged)
        return PlainResult(response, usage=dict(response.get("usage") or {}))

    def _start_shadows(
        self, assignment: Assignment, chat: ChatCompletionRequest, body: dict[str, Any]
    ) -> None:
        route = self.router.get(assignment.route)
        if route is None:
            return
        for variant in route.shadows():
            if variant.name == assignment.variant.name:
                continue
            if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
                log.warning(
                    "shadow %s skipped: %d shadows in flight", variant.name, len(self._shadows)
                )
                continue
            quiet = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            task = asyncio.create_task(self._shadow(assignment, variant, chat, quiet))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        assignment: Assignment,
        variant: Variant,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
    ) -> None:
        event = self._event(assignment, variant, 0, None, stream=False, shadow=True)
        try:
            shadow_chat = chat.model_copy(update={"stream": False, "stream_options": None})
            self._finish(event, result=await self._run(variant, shadow_chat, body))
        except GatewayError as exc:
            self._finish(event, error=exc)
        except asyncio.CancelledError:
            self._finish(event, cancelled=True)
            raise
        except Exception as exc:  # a shadow must never take anything else down
            log.exception("shadow %s failed", variant.name)
            self._finish(event, error=EngineError(f"{type(exc).__name__}: {exc}"))

    async def drain_shadows(self, timeout_s: float = 10.0) -> None:
        if self._shadows:
            await asyncio.wait(set(self._shadows), timeout=timeout_s)

    # -- events ---------------------------------------------------------------------------------

    def _event(
        self,
        assignment: Assignment,
        variant: Variant,
        attempt: int,
        fallback_from: str | None,
        *,
        stream: bool,
        shadow: bool = False,
    ) -> dict[str, Any]:
        target = self.targets.resolve(variant.target)
        return {
            "id": new_inference_id(),
            "ts": time.time(),
            "_t0": time.perf_counter(),
            "route": assignment.route or None,
            "variant": variant.name or None,
            "assignment": "shadow" if shadow else assignment.reason,
            "model": target.base_model,
            "adapter": target.adapter,
            "pipeline": variant.pipeline,
            "key_hash": assignment.key_hash,
            "shadow": shadow,
            "attempt": attempt,
            "fallback_from": fallback_from,
            "stream": stream,
            "source": "online",
        }

    def _finish(
        self,
        event: dict[str, Any],
        *,
        result: PipelineResultLike | None = None,
        error: GatewayError | None = None,
        cancelled: bool = False,
        ctx: RequestContext | None = None,
    ) -> None:
        if "status" in event:
            return  # already logged (a stream error followed by the generator closing)
        event["latency_ms"] = (time.perf_counter() - event.pop("_t0")) * 1000
        if error is not None:
            event.update(
                status="error",
                http_status=error.status_code,
                error_code=error.code,
                error_message=error.message[:1000],
            )
        elif cancelled:
            event.update(status="cancelled", http_status=499)
        else:
            assert result is not None
            usage = result.usage or {}
            event.update(
                status="ok",
                http_status=200,
                answer=result.answer,
                votes=result.votes or None,
                calls=result.calls,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
            event["cost"] = self._cost(event)
            if ctx is not None:
                ctx.tokens += (event["prompt_tokens"] or 0) + (event["completion_tokens"] or 0)
        self.metrics.observe(event)
        self.events.record(event)

    def record_rejection(self, model: str | None, error: GatewayError, started: float) -> str:
        """Log a request refused before any variant ran (bad input, unknown model)."""
        event = {
            "id": new_inference_id(),
            "ts": time.time(),
            "route": None,
            "variant": None,
            "model": model,
            "status": "error",
            "http_status": error.status_code,
            "error_code": error.code,
            "error_message": error.message[:1000],
            "latency_ms": (time.perf_counter() - started) * 1000,
            "source": "online",
            "shadow": False,
        }
        self.metrics.observe(event)
        self.events.record(event)
        return str(event["id"])

    def _cost(self, event: dict[str, Any]) -> float | None:
        spec = self.config.models.get(event["model"])
        if spec is None:
            return None
        return spec.pricing.cost(event.get("prompt_tokens"), event.get("completion_tokens"))


def _requested_pipeline(chat: ChatCompletionRequest) -> str | None:
    extension = getattr(chat, "switchboard", None)
    if extension is None:
        return None
    pipeline = getattr(extension, "pipeline", None)
    if pipeline is None and isinstance(extension, dict):
        pipeline = extension.get("pipeline")
    return str(pipeline) if pipeline is not None else None


def _require_plain(variant: Variant) -> None:
    if variant.pipeline != "plain":
        raise InvalidRequestError(
            f"Pipeline '{variant.pipeline}' is not available on this gateway.", param="model"
        )


def _apply(body: dict[str, Any], params: SamplingSpec) -> dict[str, Any]:
    """The variant's sampling settings over the client's."""
    overrides = params.model_dump(exclude_none=True)
    merged = {**body, **overrides}
    if "max_tokens" in overrides:
        merged.pop("max_completion_tokens", None)
    return merged


def _retryable(exc: GatewayError) -> bool:
    return isinstance(exc, EngineError) and exc.retryable


def _cool_key(assignment: Assignment, variant: Variant) -> str:
    return f"{assignment.route}/{variant.name}" if assignment.route else variant.target


def _skipped(assignment: Assignment, schedule: list[Variant]) -> str | None:
    """The assigned variant's name when it cools down and a fallback goes first."""
    return assignment.variant.name if schedule[0] is not assignment.variant else None


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _headers(event: dict[str, Any]) -> dict[str, str]:
    headers = {"x-switchboard-inference-id": str(event["id"])}
    if event.get("route"):
        headers["x-switchboard-route"] = str(event["route"])
        headers["x-switchboard-variant"] = str(event["variant"])
    return headers


def _extension(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "inference_id": event["id"],
        "route": event.get("route"),
        "variant": event.get("variant"),
        "pipeline": event.get("pipeline"),
    }


_INBAND_ERROR = b'data: {"error"'


def _split_inband_error(chunk: bytes) -> tuple[bytes, EngineError]:
    """The chunk up to the end of its error event, and that error as the gateway's."""
    start = chunk.index(_INBAND_ERROR)
    end = chunk.find(b"\n\n", start)
    end = len(chunk) if end < 0 else end + 2
    message = "the engine failed midway through the stream"
    try:
        detail = orjson.loads(chunk[start + 6 : end].strip()).get("error")
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            message = f"{message}: {detail['message']}"
    except (orjson.JSONDecodeError, AttributeError):
        pass
    error = EngineError(message, code="stream_failed")
    error.retryable = False  # bytes have reached the client: never retried
    return chunk[:end], error


def _usage_from_tail(tail: bytes) -> dict[str, int]:
    """Usage from the last SSE events of a stream (present with include_usage)."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = orjson.loads(line[6:]).get("usage")
            except orjson.JSONDecodeError:
                return {}
            return dict(usage) if isinstance(usage, dict) else {}
    return {}
