"""Durable mode's promise: an answer waits until its event is kept (stored or spooled).

One future per event that an answer waits on; the event log's writer keeps them as batches
are written. Bounded: a disk that takes nothing cannot hold every answer forever.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("gateway.events.log")


class Commitments:
    def __init__(self, timeout_s: float) -> None:
        #: the longest an answer waits for its event
        self.timeout_s = timeout_s
        #: answers sent after ``timeout_s`` without their event kept (a broken promise)
        self.timeouts = 0
        self._waiters: dict[str, asyncio.Future[None]] = {}

    def expect(self, inference_id: str) -> None:
        self._waiters[inference_id] = asyncio.get_running_loop().create_future()

    def kept(self, inference_id: str) -> None:
        waiter = self._waiters.pop(inference_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def release_all(self) -> None:
        """Shutdown: nobody waits any more (what could not be kept was spooled or counted)."""
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, inference_id: str) -> None:
        """Return once the event is kept, at once if nothing waits for it, or after the
        timeout (the event stays queued and is retried; ``timeouts`` counts it)."""
        waiter = self._waiters.get(inference_id)
        if waiter is None or waiter.done():
            return
        try:
            # Shielded: a client that leaves cancels its wait, never the event's write.
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout_s)
        except TimeoutError:
            self.timeouts += 1
            log.error(
                "event %s not committed within %g s; answering without it (it stays queued)",
                inference_id,
                self.timeout_s,
            )
