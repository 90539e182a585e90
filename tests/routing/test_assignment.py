"""Assignment: split within chi-square bounds, sticky across instances and processes,
minimal movement when weights change, pinning."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from scipy import stats

from gateway.config.loader import parse_config
from gateway.errors import InvalidRequestError
from gateway.routing.assignment import Router

KEYS = [f"user-{i}" for i in range(10_000)]


def router(weights: dict[str, float], *, allow_pin: bool = False, sticky: str = "user") -> Router:
    variants = ", ".join(f"{n}: {{target: m, weight: {w}}}" for n, w in weights.items())
    text = f"""
models: {{m: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}}}
routes:
  r: {{sticky_key: "{sticky}", allow_pin: {str(allow_pin).lower()}, variants: {{{variants}}}}}
"""
    return Router(parse_config(text, "t.yaml"))


def assign_all(r: Router, keys: list[str] = KEYS) -> dict[str, str]:
    route = r.get("r")
    assert route is not None
    return {k: route.assign(user=k, headers={}).variant.name for k in keys}


@pytest.mark.parametrize("weights", [{"a": 50, "b": 50}, {"a": 70, "b": 20, "c": 10}])
def test_ten_thousand_keys_split_as_the_weights(weights: dict[str, float]) -> None:
    assigned = assign_all(router(weights))
    observed = [list(assigned.values()).count(n) for n in weights]
    total = sum(weights.values())
    expected = [len(KEYS) * w / total for w in weights.values()]
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_same_key_same_variant_across_instances_and_processes() -> None:
    first = assign_all(router({"a": 50, "b": 50}), KEYS[:200])
    second = assign_all(router({"a": 50, "b": 50}), KEYS[:200])
    assert first == second
    code = (
        "from tests.routing.test_assignment import router, assign_all, KEYS;"
        "print(','.join(assign_all(router({'a': 50, 'b': 50}), KEYS[:200]).values()))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip().split(",") == list(first.values())


def test_raising_a_weight_moves_only_what_it_must() -> None:
    before = assign_all(router({"a": 50, "b": 50}))
    after = assign_all(router({"a": 60, "b": 40}))
    moved = [k for k in KEYS if before[k] != after[k]]
    # The minimum is 10% of keys, all from b to a; ranges in a fixed order would match that
    # for two variants, so the three-variant case below is the real test.
    assert all(before[k] == "b" and after[k] == "a" for k in moved)
    assert 0.07 < len(moved) / len(KEYS) < 0.13

    three_before = assign_all(router({"a": 34, "b": 33, "c": 33}))
    three_after = assign_all(router({"a": 50, "b": 25, "c": 25}))
    changed = [(three_before[k], three_after[k]) for k in KEYS if three_before[k] != three_after[k]]
    # The minimum is 16% of keys, all into a. Exact quotas cost a small cascade between b
    # and c (the greedy fill), bounded here; contiguous ranges would move 26%.
    between_others = [pair for pair in changed if pair[1] != "a"]
    assert len(between_others) / len(KEYS) < 0.005
    assert 0.15 < len(changed) / len(KEYS) < 0.17


def test_requests_without_a_key_are_assigned_each_time_by_weight() -> None:
    route = router({"a": 80, "b": 20}).get("r")
    assert route is not None
    rng = random.Random(7)
    names = [route.assign(user=None, headers={}, rng=rng).variant.name for _ in range(2000)]
    assert 0.75 < names.count("a") / 2000 < 0.85
    assert route.assign(user=None, headers={}, rng=rng).key_hash is None


def test_header_sticky_key_and_pinning() -> None:
    route = router({"a": 50, "b": 50}, allow_pin=True, sticky="header:x-session").get("r")
    assert route is not None
    one = route.assign(user="ignored", headers={"x-session": "s-1"})
    assert one.reason == "sticky" and one.key_hash
    assert route.assign(user="other", headers={"x-session": "s-1"}).variant == one.variant
    pinned = route.assign(user=None, headers={"x-switchboard-variant": "b"})
    assert pinned.variant.name == "b" and pinned.reason == "pinned"
    with pytest.raises(InvalidRequestError, match="has no variant 'z'"):
        route.assign(user=None, headers={"x-switchboard-variant": "z"})
    closed = router({"a": 50, "b": 50}).get("r")
    assert closed is not None
    with pytest.raises(InvalidRequestError, match="does not allow pinning"):
        closed.assign(user=None, headers={"x-switchboard-variant": "b"})


def test_promotion_sends_everything_to_one_variant() -> None:
    route = router({"a": 50, "b": 50}).get("r")
    assert route is not None
    route.promoted = route.variants["b"]
    assert {route.assign(user=k, headers={}).variant.name for k in KEYS[:100]} == {"b"}
    assert route.share() == {"a": 0.0, "b": 1.0}
