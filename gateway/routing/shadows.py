"""Shadow runs: a route's shadow variants answer the same request in the background.

The client never waits for a shadow nor sees its answer; each run is an event marked
``shadow``, so the experiment can compare it with the live variants. At most
``MAX_SHADOWS_IN_FLIGHT`` run at once (a slow shadow must not pile up tasks), and nothing a
shadow does can fail the request it copies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gateway.engines.target import Target
from gateway.errors import GatewayError
from gateway.protocol import ChatCompletionRequest
from gateway.routing.assignment import Assignment, Variant
from gateway.routing.attempt_events import AttemptEvents
from gateway.routing.context import PipelineResultLike

log = logging.getLogger(__name__)

MAX_SHADOWS_IN_FLIGHT = 16

#: runs one variant on a request, without fallback (the dispatcher's own way of running one)
RunVariant = Callable[
    [Variant, ChatCompletionRequest, dict[str, Any]], Awaitable[PipelineResultLike]
]


class Shadows:
    """The shadow runs in flight, started by ``start`` and awaited at shutdown by ``drain``."""

    def __init__(
        self,
        run: RunVariant,
        resolve: Callable[[str], Target],
        events: AttemptEvents,
        *,
        max_in_flight: int = MAX_SHADOWS_IN_FLIGHT,
    ) -> None:
        self._run = run
        self._resolve = resolve
        self._events = events
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        assignment: Assignment,
        shadows: Iterable[Variant],
        chat: ChatCompletionRequest,
        body: dict[str, Any],
    ) -> None:
        """Start the shadows of the assigned variant's route (not the assigned variant)."""
        for variant in shadows:
            if variant.name == assignment.variant.name:
                continue
            if len(self._tasks) >= self.max_in_flight:
                log.warning(
                    "shadow %s skipped: %d shadows in flight", variant.name, len(self._tasks)
                )
                continue
            quiet = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            task = asyncio.create_task(self._shadow(assignment, variant, chat, quiet))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _shadow(
        self,
        assignment: Assignment,
        variant: Variant,
        chat: ChatCompletionRequest,
        body: dict[str, Any],
    ) -> None:
        try:
            attempt = self._events.start(
                assignment, variant, self._resolve(variant.target), shadow=True
            )
            with attempt:
                shadow_chat = chat.model_copy(update={"stream": False, "stream_options": None})
                attempt.ok(await self._run(variant, shadow_chat, body))
        except GatewayError:
            pass  # logged as the shadow's event
        except Exception:  # a shadow must never take anything else down
            log.exception("shadow %s failed", variant.name)
