"""Routes: which variant serves a request.

Assignment is deterministic and needs no shared state, so every gateway process (and every
restart) agrees: a request's sticky key is hashed with the route's salt into one of 10,000
buckets, and each bucket belongs to one variant. Each variant owns exactly its weight's share
of the buckets (largest remainder), filled by weighted rendezvous scores
``-ln(u(salt, bucket, variant)) / weight`` (``u`` a uniform number from a hash), best pairs
first. Because a bucket's scores do not depend on the other variants' weights, a weight change
moves close to the minimum: raising one variant from 34% to 50% (the others 33/33 -> 25/25)
moves 16.2% of keys where 16% is the least possible, 0.08% of them between the two others;
contiguous ranges would move 26%. Renaming a variant or changing the salt reshuffles
everything (a new experiment).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.routes import RouteSpec, SamplingSpec
from gateway.config.schema import GatewayConfig
from gateway.errors import InvalidRequestError

BUCKETS = 10_000
PIN_HEADER = "x-switchboard-variant"

Reason = Literal["sticky", "random", "pinned", "promoted", "direct", "offline"]


@dataclass(frozen=True)
class Variant:
    name: str
    target: str
    pipeline: str
    weight: float
    params: SamplingSpec


@dataclass(frozen=True)
class Assignment:
    route: str
    variant: Variant
    reason: Reason
    #: a hash of the sticky key (never the key itself), logged with the event
    key_hash: str | None = None


def _unit(text: str) -> float:
    """A uniform number in (0, 1) from a hash."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return (value + 0.5) / 2**64


def bucket_of(salt: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") % BUCKETS


def key_hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:16]


def quotas(weights: Sequence[float]) -> list[int]:
    """Buckets per variant, exactly proportional to the weights (largest remainder)."""
    total = sum(weights)
    raw = [BUCKETS * w / total for w in weights]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: BUCKETS - sum(counts)]:
        counts[i] += 1
    return counts


def bucket_table(salt: str, variants: Sequence[Variant]) -> list[int]:
    """For each bucket, the index of the variant that owns it.

    Every (bucket, variant) pair gets a weighted rendezvous score; pairs are taken best first,
    and a bucket goes to the first variant that still has room in its exact quota. Scores
    depend only on the salt, the bucket and the variant, so a weight change only reshuffles
    the buckets whose best choice changed.
    """
    weighted = [(i, v) for i, v in enumerate(variants) if v.weight > 0]
    room = dict(zip((i for i, _ in weighted), quotas([v.weight for _, v in weighted]), strict=True))
    pairs = sorted(
        (-math.log(_unit(f"{salt}|{bucket}|{v.name}")) / v.weight, bucket, i)
        for bucket in range(BUCKETS)
        for i, v in weighted
    )
    table = [-1] * BUCKETS
    for _, bucket, i in pairs:
        if table[bucket] < 0 and room[i] > 0:
            table[bucket] = i
            room[i] -= 1
    return table


class Route:
    def __init__(self, name: str, spec: RouteSpec) -> None:
        self.name = name
        self.spec = spec
        self.salt = spec.salt or name
        self.variants = {
            vname: Variant(vname, v.target, v.pipeline, v.weight, v.params)
            for vname, v in spec.variants.items()
        }
        self._ordered = list(self.variants.values())
        self._table = bucket_table(self.salt, self._ordered)
        self.promoted: Variant | None = None

    def assign(
        self,
        *,
        user: str | None,
        headers: Mapping[str, str],
        rng: random.Random | None = None,
    ) -> Assignment:
        pin = headers.get(PIN_HEADER)
        if pin is not None:
            return Assignment(self.name, self._pinned(pin), "pinned")
        if self.promoted is not None:
            return Assignment(self.name, self.promoted, "promoted")
        key = self.sticky_key(user, headers)
        if key is None:
            # No key: each request is assigned on its own, still in proportion to the weights.
            bucket = (rng or random).randrange(BUCKETS)
            return Assignment(self.name, self._ordered[self._table[bucket]], "random")
        variant = self._ordered[self._table[bucket_of(self.salt, key)]]
        return Assignment(self.name, variant, "sticky", key_hash(self.salt, key))

    def sticky_key(self, user: str | None, headers: Mapping[str, str]) -> str | None:
        kind = self.spec.sticky_key
        if kind == "user":
            return user or None
        if kind.startswith("header:"):
            return headers.get(kind.removeprefix("header:").lower()) or None
        return None

    def fallbacks(self, failed: Variant) -> list[Variant]:
        """Variants to try, in order, after ``failed`` had a retryable failure."""
        return [self.variants[n] for n in self.spec.fallback if n != failed.name]

    def shadows(self, rng: random.Random | None = None) -> list[Variant]:
        draw = rng or random
        return [self.variants[s.variant] for s in self.spec.shadow if draw.random() < s.sample_rate]

    def promote(self, variant: str) -> None:
        self.promoted = self._pinned(variant)

    def share(self) -> dict[str, float]:
        """The traffic share each variant gets now (after a promotion, all to the winner)."""
        if self.promoted is not None:
            return {n: float(n == self.promoted.name) for n in self.variants}
        counts = {n: 0 for n in self.variants}
        for index in self._table:
            counts[self._ordered[index].name] += 1
        return {n: c / BUCKETS for n, c in counts.items()}

    def _pinned(self, name: str) -> Variant:
        if not self.spec.allow_pin:
            raise InvalidRequestError(
                f"Route '{self.name}' does not allow pinning a variant with {PIN_HEADER}.",
                param=PIN_HEADER,
            )
        variant = self.variants.get(name)
        if variant is None:
            raise InvalidRequestError(
                f"Route '{self.name}' has no variant '{name}'; it has {', '.join(self.variants)}.",
                param=PIN_HEADER,
            )
        return variant


class Router:
    def __init__(self, config: GatewayConfig, promotions: Mapping[str, str] | None = None) -> None:
        self.routes = {name: Route(name, spec) for name, spec in config.routes.items()}
        for route, variant in (promotions or {}).items():
            if route in self.routes and variant in self.routes[route].variants:
                self.routes[route].promoted = self.routes[route].variants[variant]

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)
