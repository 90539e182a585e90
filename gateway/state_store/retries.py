"""The retry budget and the cooldowns in Redis, so every gateway process agrees on them.

Both are read on every request (``remaining_s``, ``deposit``) and must cost no round trip
there, so each process keeps a mirror that a background task refreshes every
``state.sync_interval_s``; what changes them (a failure, a retry) runs a script in Redis at
once. A cooldown another gateway started is seen here within one sync interval; a failure
counted here starts it everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.routing.retries import BUDGET_CAP, BUDGET_RESERVE, Cooldowns, RetryBudget
from gateway.state_store.client import SharedState

log = logging.getLogger(__name__)


class SharedRetryBudget(RetryBudget):
    """Deposits gather here and go to Redis with each sync; a withdrawal asks Redis at once."""

    def __init__(self, ratio: float, state: SharedState) -> None:
        super().__init__(ratio)
        self.state = state
        self.pending = 0.0

    def deposit(self) -> None:
        self.pending += self.ratio
        super().deposit()  # the local level: what an open fallback uses while Redis is down

    async def take(self) -> bool:
        took = await self._apply(withdraw=True)
        if took is None:
            return self.state.fail_open and self.withdraw()
        return took

    async def sync(self) -> None:
        await self._apply(withdraw=False)

    async def _apply(self, *, withdraw: bool) -> bool | None:
        pending, self.pending = self.pending, 0.0
        result = await self.state.run(
            "BUDGET",
            (self.state.key("budget"),),
            (pending, "1" if withdraw else "0", BUDGET_RESERVE, BUDGET_CAP),
            "budget",
        )
        if result is None:
            self.pending += pending  # kept for when Redis is back
            return None
        self.level = float(result[1])
        return bool(int(result[0]))


class SharedCooldowns(Cooldowns):
    """Consecutive failures counted in Redis; ``remaining_s`` reads the local mirror.

    Times are wall-clock seconds (``time.time``): gateways on different machines compare them.
    """

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        state: SharedState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(threshold, cooldown_s, clock)
        self.state = state
        #: until when each variant cools down, as Redis said last
        self.until: dict[str, float] = {}
        #: variants with failures counted in Redis: a success must reset them
        self.failing: set[str] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    def _keys(self, key: str) -> tuple[str, str, str]:
        k = self.state.key
        return k("health", key), k("cooling"), k("failing")

    def remaining_s(self, key: str) -> float:
        local = super().remaining_s(key)
        until = self.until.get(key)
        shared = max(0.0, until - self.clock()) if until is not None else 0.0
        return max(local, shared)

    async def failed(self, key: str, started_at: float | None = None) -> bool:
        now = self.clock()
        started = "" if started_at is None else repr(started_at)
        args = (key, repr(now), started, self.threshold, self.cooldown_s)
        result = await self.state.run("FAILURE", self._keys(key), args, "cooldown")
        if result is None:
            return self.failure(key, started_at)  # this process's own count meanwhile
        self.failing.add(key)
        began, until = bool(int(result[0])), float(result[1])
        if until > now:
            self.until[key] = until
        return began

    def success(self, key: str) -> None:
        super().success(key)
        if key not in self.failing and key not in self.until:
            return  # the common case: nothing to reset, no round trip
        self.failing.discard(key)
        self.until.pop(key, None)
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self.state.run("SUCCESS", self._keys(key), (key,), "cooldown")
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cooling(self) -> dict[str, float]:
        now = self.clock()
        shared = {k: u - now for k, u in self.until.items() if u > now}
        return {**super().cooling(), **shared}

    async def sync(self) -> None:
        k = self.state.key
        result = await self.state.run(
            "SNAPSHOT", (k("cooling"), k("failing")), (repr(self.clock()),), "sync"
        )
        if result is None:
            return
        pairs, failing = result
        decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in pairs]
        self.until = {decoded[i]: float(decoded[i + 1]) for i in range(0, len(decoded), 2)}
        self.failing = {v.decode() if isinstance(v, bytes) else str(v) for v in failing}


async def sync_forever(
    state: SharedState, budget: SharedRetryBudget, cooldowns: SharedCooldowns
) -> None:
    """The background task that keeps the mirrors fresh (cancelled at shutdown)."""
    while True:
        await asyncio.sleep(state.spec.sync_interval_s)
        try:
            await budget.sync()
            await cooldowns.sync()
        except Exception:  # a bug here must not stop the syncing, nor go unseen
            log.exception("syncing the shared retry budget and cooldowns failed")
