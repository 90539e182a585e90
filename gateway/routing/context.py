"""One client request across its attempts, and what the dispatcher asks of a pipeline runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.engines.target import Target
from gateway.errors import DeadlineExceededError
from gateway.protocol import ChatCompletionRequest


@dataclass
class RequestContext:
    """One client request across its attempts: its deadline and the tokens it used."""

    #: the event loop's clock (``loop.time()``) when the whole request must be done
    deadline: float
    #: prompt and completion tokens of every attempt, for the per-key token rate limit
    tokens: int = 0

    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


def deadline_exceeded(deadline_s: float) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"The request did not finish within its deadline of {deadline_s:g} s."
    )


class PipelineResultLike(Protocol):
    """One variant's result: the response, and what the event log keeps of it."""

    response: dict[str, Any]
    answer: str | None
    votes: dict[str, int]
    calls: int
    usage: dict[str, int]


class Runner(Protocol):
    """Runs a variant's pipeline on its target (``gateway.pipelines.runner.PipelineRunner``)."""

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
