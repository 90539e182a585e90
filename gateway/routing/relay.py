"""A stream's bytes from the engine to the client, once its first chunk has come.

Bytes pass through untouched. A failure or a stall midway ends the stream with an error event
and no ``[DONE]`` (bytes have reached the client: it is never retried), and the attempt is
logged as an error; a client that goes away cancels the upstream request. The stream's usage,
when the runner reports none, is read from its last events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from gateway.errors import EngineError, GatewayError, ShuttingDownError, StreamStalledError
from gateway.events.capture import StreamCapture
from gateway.routing.attempt_events import Attempt
from gateway.routing.context import PipelineResultLike, RequestContext, deadline_exceeded

#: how much of a stream's end is kept to find its usage in
TAIL_BYTES = 4096
_INBAND_ERROR = b'data: {"error"'


async def first_chunk(
    chunks: AsyncIterator[bytes], ctx: RequestContext, deadline_s: float
) -> bytes:
    """The stream's first chunk, within the request's deadline."""
    try:
        async with asyncio.timeout_at(ctx.deadline) as scope:
            return await anext(chunks)
    except StopAsyncIteration:
        raise EngineError("the engine closed the stream without data") from None
    except TimeoutError:
        if scope.expired():
            raise deadline_exceeded(deadline_s) from None
        raise


async def relay(
    attempt: Attempt,
    first: bytes,
    chunks: AsyncIterator[bytes],
    results: list[PipelineResultLike],
    ctx: RequestContext,
    *,
    gap_s: float,
    deadline_s: float,
    capture: StreamCapture | None = None,
) -> AsyncIterator[bytes]:
    """Pass bytes through; ``results`` receives the runner's result when the stream ends;
    ``capture`` (a drawn stream of a capturing route) reads the text as it passes."""
    tail = b""
    loop = asyncio.get_running_loop()
    chunk = first
    try:
        # The attempt records a failure, or a cancellation (closing ``chunks`` below cancels
        # the upstream request), on the way out of this block.
        with attempt:
            while True:
                if _INBAND_ERROR in chunk:
                    # The engine failed midway and said so in-band (vLLM does): the events
                    # before it pass, its error becomes the gateway's (OpenAI's shape, the
                    # gateway's code) below, the [DONE] after it is dropped.
                    head, error = split_inband_error(chunk)
                    if head:
                        yield head
                    raise error
                tail = (tail + chunk)[-TAIL_BYTES:]
                if capture is not None:
                    capture.feed(chunk)
                yield chunk
                # Each wait is bounded by the gap limit and the request's deadline; the yield
                # stays outside, so a slow client is never mistaken for a stalled engine.
                stall_at = loop.time() + gap_s
                try:
                    async with asyncio.timeout_at(min(stall_at, ctx.deadline)) as scope:
                        chunk = await anext(chunks)
                    attempt.chunk_gap(loop.time() - stall_at + gap_s)  # the wait, for /metrics
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError as exc:
                    if not is_drain_cancel(exc):
                        raise
                    # The server's drain ran out: the stream ends with an error event, and
                    # the attempt is logged as the gateway's doing, not the client's.
                    uncancel()
                    raise shutting_down() from None
                except TimeoutError:
                    if not scope.expired():
                        raise
                    if stall_at <= ctx.deadline:
                        raise StreamStalledError(
                            f"The engine sent nothing for {gap_s:g} s; the stream was ended."
                        ) from None
                    raise deadline_exceeded(deadline_s) from None
            result = results[0] if results else None
            usage = result.usage if result is not None and result.usage else None
            event = attempt.ok(result, usage if usage is not None else usage_from_tail(tail))
            if capture is not None:
                capture.done(event)
    except GatewayError as exc:
        yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
    finally:
        await close(chunks)


#: the message uvicorn cancels requests with when ``timeout_graceful_shutdown`` runs out
_DRAIN_CANCEL = "timeout graceful shutdown exceeded"


def is_drain_cancel(exc: asyncio.CancelledError) -> bool:
    return any(isinstance(a, str) and _DRAIN_CANCEL in a for a in exc.args)


def shutting_down() -> ShuttingDownError:
    return ShuttingDownError(
        "The gateway is shutting down and its drain time ran out; the stream was ended."
    )


def uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def split_inband_error(chunk: bytes) -> tuple[bytes, EngineError]:
    """The chunk before its error event, and that error as the gateway's."""
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
    return chunk[:start], error


def usage_from_tail(tail: bytes) -> dict[str, int]:
    """Usage from the last SSE events of a stream (present with include_usage)."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = orjson.loads(line[6:]).get("usage")
            except orjson.JSONDecodeError:
                return {}
            return dict(usage) if isinstance(usage, dict) else {}
    return {}
