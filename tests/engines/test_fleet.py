"""The fleet: least-outstanding balancing, ejection and re-admission, affinity by request and
by user, adapter preference; then the engine over real sockets with a replica that is down."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateway.config.scale import BalanceSpec
from gateway.engines.fleet import AFFINITY, Fleet, Replica, check_forever
from gateway.engines.vllm import VLLMEngine
from tests.support.handler_server import serving

COMPLETION = {"id": "x", "object": "chat.completion", "choices": [], "usage": {}}
BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fleet(n: int = 3, **spec: Any) -> tuple[Fleet, Clock]:
    clock = Clock()
    replicas = [Replica(i, fixed_url=f"http://r{i}") for i in range(n)]
    return Fleet(replicas, BalanceSpec(**spec), clock), clock


def test_least_outstanding_avoids_the_busy_replica() -> None:
    f, _ = fleet()
    f.replicas[0].outstanding = 5
    f.replicas[1].outstanding = 1
    picks = {f.pick().index for _ in range(10)}
    assert picks == {2}


def test_idle_replicas_take_turns_and_round_robin_ignores_load() -> None:
    f, _ = fleet()
    assert {f.pick().index for _ in range(3)} == {0, 1, 2}
    rr, _ = fleet(strategy="round_robin")
    rr.replicas[0].outstanding = 50
    assert [rr.pick().index for _ in range(3)] == [0, 1, 2]


def test_a_failed_replica_is_ejected_with_backoff_and_readmitted() -> None:
    f, clock = fleet(2, eject_s=2.0)
    bad = f.replicas[0]
    f.failed(bad, "ClientConnectorError")
    assert bad.ejected and all(f.pick() is f.replicas[1] for _ in range(5))
    assert not f.due_for_check(bad)
    clock.now += 2.0
    assert f.due_for_check(bad)
    f.readmit(bad)
    assert not bad.ejected and bad.revivals == 1
    f.failed(bad, "again")  # the second ejection in a row lasts twice as long
    assert bad.ejected_until - clock.now == 4.0
    assert f.snapshot()[0]["state"] == "ejected"


def test_all_ejected_means_all_are_tried() -> None:
    f, _ = fleet(2)
    for r in f.replicas:
        f.failed(r, "down")
    assert f.pick() in f.replicas


def test_one_request_key_stays_on_one_replica() -> None:
    f, _ = fleet()
    first = f.pick(key="req-1")
    first.outstanding += 3  # its own members in flight
    assert all(f.pick(key="req-1") is first for _ in range(5))
    # Past the slack, the key moves to the least loaded replica.
    first.outstanding += 20
    assert f.pick(key="req-1") is not first


def test_a_sticky_key_hashes_to_the_same_replica_in_every_gateway() -> None:
    a, _ = fleet()
    b, _ = fleet()
    for user in ("alice", "bob", "carol", "dave"):
        assert a.pick(key=user, hashed=True).index == b.pick(key=user, hashed=True).index
    spread = {a.pick(key=f"user{i}", hashed=True).index for i in range(50)}
    assert spread == {0, 1, 2}


def test_a_replica_holding_the_adapter_is_preferred() -> None:
    f, _ = fleet()
    f.replicas[2].adapters.add("lora-a")
    f.replicas[2].outstanding = 2
    assert all(f.pick(adapter="lora-a") is f.replicas[2] for _ in range(5))
    f.replicas[2].outstanding = 50  # too busy: another replica serves (and will load it)
    assert f.pick(adapter="lora-a") is not f.replicas[2]


async def test_active_checks_readmit_a_replica_that_answers_again() -> None:
    f, clock = fleet(2, eject_s=0.01)
    down = {"http://r0"}
    f.failed(f.replicas[0], "down")
    clock.now += 1

    async def probe(replica: Replica) -> str | None:
        return "refused" if replica.url in down else None

    task = asyncio.create_task(check_forever(f, probe, 0.01))
    await asyncio.sleep(0.05)
    assert f.replicas[0].ejected  # still failing its checks
    down.clear()
    clock.now += 100
    # Wait for the condition (a check that passes), not for a duration: bounded by a deadline.
    deadline = asyncio.get_running_loop().time() + 30
    while f.replicas[0].ejected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    assert not f.replicas[0].ejected


async def test_the_engine_routes_around_a_dead_replica_without_an_error() -> None:
    served: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            served.append(str(request.url.port))
        return httpx.Response(200, json=COMPLETION)

    async with serving(ok) as live:
        dead = "http://127.0.0.1:1"
        engine = VLLMEngine(model_id="m", upstream_model="m", urls=[dead, live], timeout_s=5)
        await engine.start()
        try:
            for _ in range(6):
                await engine.chat(BODY)
            snapshot = (await engine.health()).extra["replicas"]
        finally:
            await engine.stop()
    assert len(served) == 6
    assert snapshot[0]["state"] == "ejected" and snapshot[1]["served"] == 6


async def test_members_of_one_request_share_a_replica() -> None:
    ports: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        ports.append(str(request.url.port))
        return httpx.Response(200, json=COMPLETION)

    async with serving(ok) as one, serving(ok) as two:
        engine = VLLMEngine(model_id="m", upstream_model="m", urls=[one, two], timeout_s=5)
        await engine.start()
        try:
            for request in range(4):
                AFFINITY.set((f"request-{request}", None))
                await asyncio.gather(*(engine.chat(BODY) for _ in range(5)))
        finally:
            await engine.stop()
    groups = [ports[i * 5 : (i + 1) * 5] for i in range(4)]
    assert all(len(set(g)) == 1 for g in groups)
    assert len({g[0] for g in groups}) == 2  # requests still spread over both replicas
