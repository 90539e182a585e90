"""Per-key rate limits (requests and tokens per minute) and the global concurrency gate.

Checks and updates run on the event loop with no ``await`` between them, so a concurrent burst
cannot overshoot: asyncio runs one admission at a time. That holds within one process; with
``state.url`` set, ``gateway.state_store.limits.SharedRateLimiter`` keeps the same buckets in
Redis (one Lua script per admission), so every gateway process draws on one limit.

Tokens are reserved up front (an estimate from the prompt and the output limit) and settled
with the real usage afterwards, so a burst of long requests is held back before it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import EngineUnavailableError, RateLimitError

#: output tokens reserved for a request that sets no max_tokens
DEFAULT_OUTPUT_RESERVE = 256


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
        """Seconds until ``amount`` fits (never more than a full bucket); 0 when it fits now."""
        self._refill()
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.capacity

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True)
class Quota:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


class RateLimiter:
    """Requests and tokens per minute, one pair of buckets per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, key: str, quota: Quota, tokens: int = 0) -> int:
        """Take one request and reserve ``tokens``, or raise 429 with Retry-After.

        Returns the tokens reserved, to hand to ``settle`` when the real usage is known.
        """
        requests = self._bucket(self._requests, key, quota.requests_per_minute)
        token_bucket = self._bucket(self._tokens, key, quota.tokens_per_minute)
        wait = max(
            requests.wait_s(1) if requests else 0.0,
            token_bucket.wait_s(tokens) if token_bucket else 0.0,
        )
        if wait > 0:
            raise rate_limited(wait)
        if requests:
            requests.take(1)
        if token_bucket:
            # A request larger than the whole bucket reserves the bucket: it waits for a full
            # bucket instead of being refused forever, and settles its real usage afterwards.
            reserved = min(tokens, math.floor(token_bucket.capacity))
            token_bucket.take(reserved)
            return reserved
        return 0

    async def acquire(self, key: str, quota: Quota, tokens: int = 0) -> int:
        """``admit``, awaitable: what the request path calls (the shared limiter awaits Redis)."""
        return self.admit(key, quota, tokens)

    def settle(self, key: str, reserved: int, used: int) -> None:
        """Replace a reservation by the tokens the request really used."""
        bucket = self._tokens.get(key)
        if bucket is None or reserved == used:
            return
        if used > reserved:
            bucket.take(used - reserved)
        else:
            bucket.give_back(reserved - used)

    def _bucket(
        self, table: dict[str, TokenBucket], key: str, capacity: float | None
    ) -> TokenBucket | None:
        if not capacity:
            return None
        bucket = table.get(key)
        if bucket is None or bucket.capacity != capacity:
            bucket = table[key] = TokenBucket(capacity, self.clock)
        return bucket


def rate_limited(wait_s: float) -> RateLimitError:
    seconds = max(1, math.ceil(wait_s))
    return RateLimitError(
        f"Rate limit reached for this API key; retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


#: addresses whose failures are remembered; past it the oldest are forgotten
MAX_THROTTLED_ADDRESSES = 10_000


class AuthThrottle:
    """Failed authentications per client address: ``capacity`` a minute, then 429.

    Once an address has used its failures up, its requests are refused before their key is
    looked at, so guessing runs at the refill rate and a flood of bad keys costs one dict
    lookup each. Good keys from other addresses are untouched.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.failures = 0

    def check(self, address: str) -> None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return
        wait = bucket.wait_s(1)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimitError(
                f"Too many failed authentications from this address; retry in {seconds} s.",
                code="auth_throttled",
                headers={"Retry-After": str(seconds)},
            )

    def failed(self, address: str, capacity: float) -> None:
        self.failures += 1
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= MAX_THROTTLED_ADDRESSES:
                del self._buckets[next(iter(self._buckets))]  # the oldest address
            bucket = self._buckets[address] = TokenBucket(capacity, self.clock)
        bucket.take(1)


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
                code="gateway_overloaded",
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
