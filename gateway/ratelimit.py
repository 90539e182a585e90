"""Per-key rate limits (requests and tokens per minute) and the global concurrency gate.

Both run on the event loop without awaiting between check and update, so concurrent bursts
cannot overshoot: asyncio runs one of them at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import EngineUnavailableError, RateLimitError


@dataclass
class TokenBucket:
    """``capacity`` per minute, refilled continuously; it may go negative after a charge."""

    capacity: float
    clock: Callable[[], float] = time.monotonic
    level: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.level = self.capacity
        self.stamp = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` fits; 0 when it fits now."""
        self._refill()
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.capacity

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class RateLimiter:
    """Requests and tokens per minute, per key name."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, key: str) -> None:
        """Take one request from the key's budget, or raise 429 with Retry-After."""
        waits = []
        if self.requests_per_minute:
            waits.append(self._bucket(self._requests, key, self.requests_per_minute).wait_s(1))
        if self.tokens_per_minute:
            # Tokens are charged after the answer; a key in debt waits until it is repaid.
            waits.append(self._bucket(self._tokens, key, self.tokens_per_minute).wait_s(0))
        wait = max(waits, default=0.0)
        if wait > 0:
            raise RateLimitError(
                f"Rate limit reached for this API key; retry in {math.ceil(wait)} s.",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if self.requests_per_minute:
            self._requests[key].take(1)

    def charge_tokens(self, key: str, tokens: int) -> None:
        if self.tokens_per_minute and tokens > 0:
            self._bucket(self._tokens, key, self.tokens_per_minute).take(tokens)

    def _bucket(self, table: dict[str, TokenBucket], key: str, capacity: float) -> TokenBucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = TokenBucket(capacity, self.clock)
        return bucket


class ConcurrencyGate:
    """At most ``limit`` requests in flight; the next one is refused at once with 503."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        if self.limit is not None and self.in_flight >= self.limit:
            raise EngineUnavailableError(
                f"The gateway is at its limit of {self.limit} concurrent requests; retry shortly.",
                retry_after_s=1,
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
