"""API keys and limits, as logic (the API-level tests exercise them through the gateway)."""

from __future__ import annotations

import pytest

from gateway.admission.keys import ApiKey, KeyRing, hash_key, new_key
from gateway.admission.ratelimit import ConcurrencyGate, Quota, RateLimiter
from gateway.errors import (
    AuthenticationError,
    EngineUnavailableError,
    PermissionDeniedError,
    RateLimitError,
)
from gateway.routing.retries import Cooldowns


def ring() -> tuple[KeyRing, str, str]:
    user, admin = new_key(), new_key()
    keys = [
        ApiKey("app", hash_key(user), frozenset({"inference", "feedback"})),
        ApiKey("ops", hash_key(admin), frozenset({"admin", "inference", "feedback"})),
    ]
    return KeyRing(keys), user, admin


def test_keys_are_matched_by_hash_with_scopes() -> None:
    keys, user, admin = ring()
    assert keys.authenticate(f"Bearer {user}", "inference").name == "app"  # type: ignore[union-attr]
    assert keys.authenticate(f"Bearer {admin}", "admin").name == "ops"  # type: ignore[union-attr]
    with pytest.raises(PermissionDeniedError):
        keys.authenticate(f"Bearer {user}", "admin")
    for header in (None, "", "Basic abc", f"Bearer {user}x"):
        with pytest.raises(AuthenticationError):
            keys.authenticate(header, "inference")
    assert hash_key(user).startswith("sha256:") and user not in hash_key(user)


def test_no_keys_means_auth_off() -> None:
    assert KeyRing([]).authenticate(None, "admin") is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    quota = Quota(requests_per_minute=60)
    for _ in range(60):
        limiter.admit("k", quota)
    with pytest.raises(RateLimitError) as info:
        limiter.admit("k", quota)
    assert info.value.headers["Retry-After"] == "1"
    limiter.admit("other", quota)  # per key
    clock.now += 1.0
    limiter.admit("k", quota)


def test_tokens_are_reserved_up_front_and_settled() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    quota = Quota(tokens_per_minute=600)
    reserved = limiter.admit("k", quota, tokens=400)
    assert reserved == 400
    # A burst: the second reservation does not fit while the first is outstanding.
    with pytest.raises(RateLimitError) as info:
        limiter.admit("k", quota, tokens=400)
    assert info.value.headers["Retry-After"] == "20"
    limiter.settle("k", reserved, used=100)  # the answer was short: 300 come back
    limiter.admit("k", quota, tokens=400)
    limiter.settle("k", 400, used=900)  # longer than reserved: the key goes into debt
    with pytest.raises(RateLimitError) as info:
        limiter.admit("k", quota, tokens=1)
    assert info.value.headers["Retry-After"] == "41"
    clock.now += 41
    limiter.admit("k", quota, tokens=1)


def test_a_reservation_larger_than_the_bucket_waits_for_a_full_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    quota = Quota(tokens_per_minute=100)
    limiter.admit("k", quota, tokens=5000)  # full bucket: admitted, never refused forever
    with pytest.raises(RateLimitError):
        limiter.admit("k", quota, tokens=5000)
    clock.now += 120
    limiter.admit("k", quota, tokens=5000)


def test_concurrency_gate_refuses_at_once() -> None:
    gate = ConcurrencyGate(2)
    gate.enter()
    gate.enter()
    with pytest.raises(EngineUnavailableError) as info:
        gate.enter()
    assert info.value.headers["Retry-After"] == "1"
    gate.leave()
    gate.enter()


def test_failed_authentications_are_throttled_per_address() -> None:
    keys, user, _ = ring()
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            keys.authenticate("Bearer wrong", "inference", "10.0.0.1", 3)
    with pytest.raises(RateLimitError) as info:  # even a good key: guesses are not checked
        keys.authenticate(f"Bearer {user}", "inference", "10.0.0.1", 3)
    assert info.value.code == "auth_throttled" and int(info.value.headers["Retry-After"]) >= 1
    assert keys.authenticate(f"Bearer {user}", "inference", "10.0.0.2", 3) is not None
    assert keys.throttle.failures == 3


def test_one_blip_is_one_failure_for_the_cooldown() -> None:
    now = [100.0]
    cool = Cooldowns(threshold=2, cooldown_s=30, clock=lambda: now[0])
    started = now[0]
    now[0] += 1
    # Five requests in flight together fail: one failure.
    assert not any(cool.failure("m", started) for _ in range(5))
    assert cool.remaining_s("m") == 0
    now[0] += 1
    assert cool.failure("m", now[0])  # a request started after it fails too: the second
    assert cool.remaining_s("m") > 0
