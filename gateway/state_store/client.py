"""One Redis connection pool per gateway process, its scripts, and what happens when it is down.

Every call is bounded by ``state.timeout_s``. A failed call marks Redis down for
``RETRY_AFTER_S``: for that long calls are not tried (a request must not wait out a connect
timeout each), and each skipped or failed call is counted (``on_unavailable`` hook, the
``switchboard_state_unavailable_total`` metric) and answered as ``state.on_unavailable`` says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config.scale import StateSpec
from gateway.state_store import scripts

log = logging.getLogger(__name__)

#: seconds Redis is left alone after a failed call
RETRY_AFTER_S = 1.0


class SharedState:
    """Redis, as the gateway uses it: named scripts that answer ``None`` when it is down."""

    def __init__(
        self,
        spec: StateSpec,
        *,
        on_unavailable: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert spec.url is not None
        self.spec = spec
        self.prefix = spec.prefix
        self.fail_open = spec.on_unavailable == "open"
        self.on_unavailable = on_unavailable
        self.clock = clock
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            spec.url,
            socket_timeout=spec.timeout_s,
            socket_connect_timeout=spec.timeout_s,
            # The gateway's own fallback (open or closed) replaces redis-py's retries.
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._scripts = {
            name: self.client.register_script(getattr(scripts, name))
            for name in ("ADMIT", "SETTLE", "BUDGET", "FAILURE", "SUCCESS", "SNAPSHOT")
        }
        self._down_until = float("-inf")
        #: calls that failed or were skipped because Redis was down
        self.unavailable = 0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def up(self) -> bool:
        return self.clock() >= self._down_until

    async def run(
        self, script: str, keys: Sequence[str], args: Sequence[str | int | float], operation: str
    ) -> Any | None:
        """Run one script; ``None`` when Redis is down (counted, and left alone a while)."""
        if not self.up:
            self._count(operation)
            return None
        try:
            return await self._scripts[script](keys=list(keys), args=list(args))
        except (RedisError, OSError, TimeoutError) as exc:
            if self.up:
                log.warning("shared state (Redis) unavailable: %s; %s", exc, self._mode())
            self._down_until = self.clock() + RETRY_AFTER_S
            self._count(operation)
            return None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()

    def _count(self, operation: str) -> None:
        self.unavailable += 1
        if self.on_unavailable is not None:
            self.on_unavailable(operation)

    def _mode(self) -> str:
        if self.fail_open:
            return "failing open: each gateway process applies its own limits meanwhile"
        return "failing closed: rate-limited requests get 503 and nothing is retried meanwhile"
