"""A model's replicas (several vLLM servers), health-checked and balanced per request.

- Least outstanding requests (or round robin): a slow replica holds more requests in flight and
  so gets fewer new ones, where rotation keeps giving it its share.
- Ejection: a replica that fails (connection refused or reset, 502/503) leaves the rotation for
  ``eject_s``, doubling per consecutive ejection up to ``max_eject_s`` (passive checks); after
  that, an active ``/health`` check must pass before it is admitted again. When every replica
  is out, all are tried (Envoy's "panic" mode): failing fast helps no one.
- Affinity: a request-scoped key (``AFFINITY``, set by the dispatcher for each request, so the
  members of one pipeline request share it) or a sticky one (``balance.sticky: user``) maps to
  one replica by rendezvous hashing, so its prompts reuse that replica's prefix cache; gateways
  agree on the mapping without talking to each other. A replica with ``affinity_slack`` more
  requests in flight than the least loaded one is skipped.
- Adapters: a replica that holds the adapter is preferred; otherwise the chosen replica loads
  it (``adapters/serving.py``), so an adapter lives on the replicas that serve it, not on all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from gateway.config.scale import BalanceSpec
from gateway.engines.supervisor import VLLMSupervisor

log = logging.getLogger(__name__)

#: the current request's (key, user): set once per request by the dispatcher, inherited by
#: the members of its pipeline (asyncio tasks copy the context)
AFFINITY: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "switchboard_affinity", default=None
)
#: affinity keys remembered with the replica they were given
MAX_AFFINITY_KEYS = 4096


@dataclass(eq=False)
class Replica:
    """One vLLM server: at a fixed URL, or launched (its supervisor knows the port)."""

    index: int
    fixed_url: str | None = None
    supervisor: VLLMSupervisor | None = None
    outstanding: int = 0
    served: int = 0
    failures: int = 0
    #: consecutive ejections (sets the backoff; reset by a success)
    ejections: int = 0
    #: every ejection since start (the metrics' counter)
    ejections_total: int = 0
    ejected_until: float = 0.0
    ejected: bool = False
    #: times it came back from an ejection (it may have restarted and lost its adapters)
    revivals: int = 0
    last_error: str = ""
    adapters: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.supervisor.url if self.supervisor is not None else str(self.fixed_url)

    @property
    def generation(self) -> int:
        restarts = self.supervisor.restarts if self.supervisor is not None else 0
        return restarts + self.revivals

    @property
    def running(self) -> bool:
        return self.supervisor is None or self.supervisor.state == "ready"

    @property
    def in_rotation(self) -> bool:
        return self.running and not self.ejected

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": "ejected" if self.ejected else ("ready" if self.running else "starting"),
            "outstanding": self.outstanding,
            "served": self.served,
            "failures": self.failures,
            "ejections": self.ejections,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 1) if self.ejected else 0,
            "last_error": self.last_error,
        }


class Fleet:
    def __init__(
        self,
        replicas: Sequence[Replica],
        spec: BalanceSpec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a fleet needs at least one replica")
        self.replicas = list(replicas)
        self.spec = spec
        self.clock = clock
        self._turn = itertools.count()
        self._keys: OrderedDict[str, Replica] = OrderedDict()

    # -- choosing -------------------------------------------------------------------------------

    def pick(
        self,
        *,
        adapter: str | None = None,
        key: str | None = None,
        hashed: bool = False,
        exclude: Sequence[Replica] = (),
    ) -> Replica:
        """The replica for one call. ``key``: calls with one key share a replica (the first
        goes to the least loaded, or with ``hashed`` to the key's rendezvous choice)."""
        if len(self.replicas) == 1 and not exclude:
            return self.replicas[0]  # the common case costs nothing
        pool = [r for r in self.replicas if r not in exclude] or list(self.replicas)
        live = [r for r in pool if r.in_rotation] or pool  # panic: try them all
        if adapter is not None:
            holders = [r for r in live if adapter in r.adapters]
            if holders and self._within_slack(holders, live):
                live = holders
        if key is not None:
            chosen = self._affine(key, live, hashed)
            if chosen is not None:
                return chosen
        return self._least(live)

    def _least(self, live: list[Replica]) -> Replica:
        turn = next(self._turn)
        if self.spec.strategy == "round_robin":
            return live[turn % len(live)]
        # Ties go round the replicas, so an idle fleet still spreads its requests.
        n = len(live)
        return min((live[(turn + i) % n] for i in range(n)), key=lambda r: r.outstanding)

    def _within_slack(self, chosen: list[Replica], live: list[Replica]) -> bool:
        lowest = min(r.outstanding for r in live)
        return min(r.outstanding for r in chosen) <= lowest + self.spec.affinity_slack

    def _affine(self, key: str, live: list[Replica], hashed: bool) -> Replica | None:
        known = self._keys.get(key)
        if known is None or known not in live:
            if not hashed:
                known = self._least(live)
            else:
                known = max(live, key=lambda r: _weight(key, r.url))
        if not self._within_slack([known], live):
            return None
        self._keys[key] = known
        self._keys.move_to_end(key)
        if len(self._keys) > MAX_AFFINITY_KEYS:
            self._keys.popitem(last=False)
        return known

    @contextlib.contextmanager
    def using(self, replica: Replica) -> Iterator[None]:
        """Counts the request in flight on ``replica`` while the block runs."""
        replica.outstanding += 1
        try:
            yield
        finally:
            replica.outstanding -= 1

    # -- health ---------------------------------------------------------------------------------

    def succeeded(self, replica: Replica) -> None:
        replica.served += 1
        replica.failures = 0
        if not replica.ejected:
            replica.ejections = 0

    def failed(self, replica: Replica, reason: str) -> None:
        """A passive check failed: out of the rotation for a backoff (if others remain)."""
        replica.failures += 1
        replica.last_error = reason
        if replica.ejected:
            return
        replica.ejections += 1
        replica.ejections_total += 1
        backoff = min(self.spec.max_eject_s, self.spec.eject_s * 2 ** (replica.ejections - 1))
        replica.ejected = True
        replica.ejected_until = self.clock() + backoff
        log.warning("replica %s ejected for %g s: %s", replica.url, backoff, reason)

    def readmit(self, replica: Replica) -> None:
        if replica.ejected:
            replica.ejected = False
            replica.revivals += 1
            log.info("replica %s is healthy again and takes traffic", replica.url)

    def due_for_check(self, replica: Replica) -> bool:
        return not replica.ejected or self.clock() >= replica.ejected_until

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [r.snapshot(now) for r in self.replicas]


def _weight(key: str, url: str) -> int:
    """Rendezvous hashing: every gateway ranks the replicas for a key the same way."""
    digest = hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


async def check_forever(fleet: Fleet, probe: Callable[[Replica], Any], interval_s: float) -> None:
    """Active checks: each replica's /health every ``interval_s`` (``probe`` returns an error
    string or None); an ejected replica is admitted again once its backoff ended and it passes."""
    while True:
        await asyncio.sleep(interval_s)
        for replica in fleet.replicas:
            if not replica.running or not fleet.due_for_check(replica):
                continue
            problem = await probe(replica)
            if problem is None:
                fleet.readmit(replica)
            elif not replica.ejected:
                fleet.failed(replica, f"health check: {problem}")
            else:  # still down: the next backoff, longer
                replica.ejected = False
                fleet.failed(replica, f"health check: {problem}")
