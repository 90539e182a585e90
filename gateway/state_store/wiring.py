"""What the app builds from ``state:``: the shared limiter, budget and cooldowns, or nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.schema import GatewayConfig
from gateway.state_store.client import SharedState
from gateway.state_store.limits import SharedRateLimiter
from gateway.state_store.retries import SharedCooldowns, SharedRetryBudget, sync_forever


@dataclass
class Shared:
    state: SharedState
    limiter: SharedRateLimiter
    budget: SharedRetryBudget
    cooldowns: SharedCooldowns
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.state.close()


async def open_shared(
    config: GatewayConfig, on_unavailable: Callable[[str], None]
) -> Shared | None:
    """None without ``state.url``. Redis down at start is not fatal: it is ``on_unavailable``."""
    if config.state.url is None:
        return None
    state = SharedState(config.state, on_unavailable=on_unavailable)
    reliability = config.reliability
    budget = SharedRetryBudget(reliability.retry_budget, state)
    cooldowns = SharedCooldowns(reliability.cooldown_failures, reliability.cooldown_s, state)
    await cooldowns.sync()
    task = asyncio.create_task(sync_forever(state, budget, cooldowns), name="shared-state-sync")
    return Shared(state, SharedRateLimiter(state), budget, cooldowns, task)
