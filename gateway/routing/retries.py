"""What bounds retries: a budget shared by all requests, and cooldowns for failing variants.

Retries multiply load exactly when an engine is struggling; the budget caps them at a share of
the traffic (Finagle's and gRPC's retry budgets work the same way), so an outage costs at most
``1 + ratio`` times the normal load instead of ``max_attempts`` times. A variant that keeps
failing cools down: for ``cooldown_s`` the dispatcher sends its traffic to the fallbacks (or
refuses at once when there are none) instead of waiting on a broken engine again and again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: retries the budget holds in reserve, so a quiet gateway can still retry
BUDGET_RESERVE = 10.0
#: the most retries the budget saves up
BUDGET_CAP = 100.0


@dataclass
class RetryBudget:
    """Each request deposits ``ratio`` of a retry; each retry withdraws one."""

    ratio: float
    level: float = BUDGET_RESERVE

    def deposit(self) -> None:
        self.level = min(BUDGET_CAP, self.level + self.ratio)

    def withdraw(self) -> bool:
        if self.level < 1:
            return False
        self.level -= 1
        return True

    async def take(self) -> bool:
        """``withdraw``, awaitable: the shared budget (``state_store``) asks Redis."""
        return self.withdraw()


@dataclass
class _Health:
    failures: int = 0
    until: float = 0.0
    #: when the last counted failure was seen
    counted_at: float = float("-inf")


@dataclass
class Cooldowns:
    """Consecutive retryable failures per variant; ``threshold`` of them cool it down.

    A failure counts only when its attempt started after the last counted failure: requests
    in flight when the engine blipped fail together, and that is one failure, not one per
    request (five of them used to cool a model with no fallback down though it was fine).
    """

    threshold: int
    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    _health: dict[str, _Health] = field(default_factory=dict)

    def remaining_s(self, key: str) -> float:
        """Seconds the variant still cools down; 0 when it takes traffic."""
        health = self._health.get(key)
        return max(0.0, health.until - self.clock()) if health is not None else 0.0

    def failure(self, key: str, started_at: float | None = None) -> bool:
        """Count a failure of an attempt started at ``started_at`` (``clock``'s time; None:
        now); True when it starts a cooldown."""
        now = self.clock()
        health = self._health.setdefault(key, _Health())
        if started_at is not None and started_at < health.counted_at:
            return False  # in flight when the last failure was counted: the same blip
        health.counted_at = now
        health.failures += 1
        if health.failures >= self.threshold:
            health.until = self.clock() + self.cooldown_s
            # Half-open afterwards: one more failure after the cooldown starts the next one.
            health.failures = self.threshold - 1
            return True
        return False

    async def failed(self, key: str, started_at: float | None = None) -> bool:
        """``failure``, awaitable: the shared cooldowns (``state_store``) count in Redis."""
        return self.failure(key, started_at)

    def success(self, key: str) -> None:
        self._health.pop(key, None)

    def cooling(self) -> dict[str, float]:
        """Every variant cooling down now, with the seconds it has left (for /ready)."""
        now = self.clock()
        return {k: h.until - now for k, h in self._health.items() if h.until > now}
