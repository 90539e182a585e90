"""The Lua scripts against a private redis-server: one limit, one budget, one set of cooldowns
for every gateway process, and the documented behaviour when Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.admission.ratelimit import Quota
from gateway.config.scale import StateSpec
from gateway.errors import RateLimitError, StateUnavailableError
from gateway.state_store.client import SharedState
from gateway.state_store.limits import SharedRateLimiter
from gateway.state_store.retries import SharedCooldowns, SharedRetryBudget
from tests.support.redis import RedisServer, start_redis

_prefix = iter(range(1_000_000))


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def _state(server: RedisServer, prefix: str, **spec: object) -> SharedState:
    settings = StateSpec.model_validate({"url": server.url, "prefix": prefix, **spec})
    return SharedState(settings, on_unavailable=None)


@pytest.fixture
async def gateways(redis_server: RedisServer) -> AsyncIterator[tuple[SharedState, SharedState]]:
    """Two gateway processes' views of one Redis (two clients, one key prefix)."""
    prefix = f"t{next(_prefix)}:"
    a, b = _state(redis_server, prefix), _state(redis_server, prefix)
    yield a, b
    await a.close()
    await b.close()


async def test_two_limiters_share_one_request_limit(
    gateways: tuple[SharedState, SharedState],
) -> None:
    limiters = [SharedRateLimiter(s) for s in gateways]
    quota = Quota(requests_per_minute=10)

    async def one(i: int) -> bool:
        try:
            await limiters[i % 2].acquire("alice", quota)
        except RateLimitError as exc:
            assert int(exc.headers["Retry-After"]) >= 1
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert sum(results) == 10
    # Another key has its own bucket.
    await limiters[0].acquire("bob", quota)


async def test_tokens_are_reserved_and_settled_in_redis(
    gateways: tuple[SharedState, SharedState],
) -> None:
    a, b = (SharedRateLimiter(s) for s in gateways)
    quota = Quota(tokens_per_minute=1000)
    reserved = await a.acquire("k", quota, tokens=900)
    assert reserved == 900
    with pytest.raises(RateLimitError):
        await b.acquire("k", quota, tokens=200)
    a.settle("k", reserved, used=100)  # 800 go back
    await asyncio.gather(*a._tasks)
    assert await b.acquire("k", quota, tokens=500) == 500


async def test_a_request_over_the_whole_bucket_reserves_the_bucket(
    gateways: tuple[SharedState, SharedState],
) -> None:
    limiter = SharedRateLimiter(gateways[0])
    assert await limiter.acquire("big", Quota(tokens_per_minute=100), tokens=5000) == 100


async def test_the_retry_budget_is_one_budget(gateways: tuple[SharedState, SharedState]) -> None:
    a, b = (SharedRetryBudget(0.0, s) for s in gateways)
    took = [await (a if i % 2 else b).take() for i in range(15)]
    assert sum(took) == 10  # the reserve, drawn from both
    a.ratio = 1.0
    a.deposit()
    a.deposit()
    await a.sync()
    assert await b.take() and await b.take() and not await b.take()


async def test_a_cooldown_counted_by_one_gateway_holds_for_the_other(
    gateways: tuple[SharedState, SharedState],
) -> None:
    a, b = (SharedCooldowns(2, 30.0, s) for s in gateways)
    assert not await a.failed("m")
    assert await b.failed("m")  # the second failure, counted in another process
    assert b.remaining_s("m") > 29
    assert a.remaining_s("m") == 0  # not synced yet
    await a.sync()
    assert 29 < a.remaining_s("m") <= 30
    assert "m" in a.cooling()
    a.success("m")
    await asyncio.gather(*a._tasks)
    await b.sync()
    assert b.remaining_s("m") == 0


async def test_failures_in_flight_together_count_once(
    gateways: tuple[SharedState, SharedState],
) -> None:
    a, b = (SharedCooldowns(2, 30.0, s) for s in gateways)
    started = a.clock()
    await asyncio.sleep(0.01)
    assert not await a.failed("m", started)
    assert not await b.failed("m", started)  # started before the counted failure: one blip
    assert await b.failed("m")


async def test_redis_down_fails_open_to_local_limits(redis_server: RedisServer) -> None:
    seen: list[str] = []
    dead = SharedState(
        StateSpec(url="redis://127.0.0.1:1/0", timeout_s=0.1), on_unavailable=seen.append
    )
    limiter = SharedRateLimiter(dead)
    quota = Quota(requests_per_minute=2)
    await limiter.acquire("k", quota)
    await limiter.acquire("k", quota)
    with pytest.raises(RateLimitError):
        await limiter.acquire("k", quota)  # this process's own bucket meanwhile
    assert seen == ["admit"] * 3
    budget = SharedRetryBudget(0.1, dead)
    assert await budget.take()  # the local reserve
    cooldowns = SharedCooldowns(1, 30.0, dead)
    assert await cooldowns.failed("m")
    assert cooldowns.remaining_s("m") > 0
    await dead.close()


async def test_redis_down_fails_closed_when_configured() -> None:
    dead = SharedState(
        StateSpec(url="redis://127.0.0.1:1/0", timeout_s=0.1, on_unavailable="closed")
    )
    with pytest.raises(StateUnavailableError) as caught:
        await SharedRateLimiter(dead).acquire("k", Quota(requests_per_minute=5))
    assert caught.value.status_code == 503
    assert not await SharedRetryBudget(0.1, dead).take()
    # A key with no quota never needs Redis.
    assert await SharedRateLimiter(dead).acquire("k", Quota()) == 0
    await dead.close()


async def test_redis_restarting_is_used_again(redis_server: RedisServer) -> None:
    state = _state(redis_server, f"t{next(_prefix)}:", timeout_s=0.2)
    limiter = SharedRateLimiter(state)
    quota = Quota(requests_per_minute=100)
    await limiter.acquire("k", quota)
    redis_server.stop()
    try:
        await limiter.acquire("k", quota)  # fails open
        assert not state.up
    finally:
        redis_server.start()
    state._down_until = float("-inf")  # skip the pause after a failure
    await limiter.acquire("k", quota)
    assert state.up
    await state.close()
