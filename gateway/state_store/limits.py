"""Per-key request and token rates in Redis: one limit, whichever gateway a request reaches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.admission.ratelimit import Quota, RateLimiter, rate_limited
from gateway.errors import StateUnavailableError
from gateway.state_store.client import SharedState


class SharedRateLimiter(RateLimiter):
    """The buckets of ``RateLimiter``, kept in Redis and updated by one script per request.

    A request with no quota never reaches Redis. When Redis is down, ``on_unavailable: open``
    falls back to this process's own buckets (the inherited ``admit``) and ``closed`` refuses
    with 503: a deployment that sells quotas may prefer refusing to overspending.
    """

    def __init__(self, state: SharedState, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.state = state
        #: reservations made in Redis (per key: the token capacity), so settling goes there
        self._remote: dict[str, float] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    async def acquire(self, key: str, quota: Quota, tokens: int = 0) -> int:
        requests = quota.requests_per_minute or 0
        capacity = quota.tokens_per_minute or 0
        if not requests and not capacity:
            return 0
        keys = (self.state.key("rate", "req", key), self.state.key("rate", "tok", key))
        result = await self.state.run("ADMIT", keys, (requests, capacity, tokens), "admit")
        if result is None:
            if self.state.fail_open:
                return self.admit(key, quota, tokens)
            raise StateUnavailableError(
                "The gateway's shared rate limits are unavailable; retry shortly."
            )
        admitted, wait_ms, reserved = (int(v) for v in result)
        if not admitted:
            raise rate_limited(wait_ms / 1000)
        if capacity:
            self._remote[key] = capacity
        return reserved

    def settle(self, key: str, reserved: int, used: int) -> None:
        capacity = self._remote.get(key)
        if capacity is None:
            super().settle(key, reserved, used)
            return
        if reserved == used:
            return
        # Off the request's path: the answer is sent already, the bucket catches up a moment later.
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self.state.run(
                "SETTLE",
                (self.state.key("rate", "tok", key),),
                (capacity, used - reserved),
                "settle",
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
