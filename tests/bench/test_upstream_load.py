"""The upstream double's ``load_ms``: a replica that slows as its load grows (bench/upstream.py).

Timings are lower bounds only: a loaded machine makes requests slower, never faster.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.upstream import DEFAULT_MODEL, Profile, UpstreamDouble

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}


def test_a_profile_takes_load_ms() -> None:
    name, profile = Profile.parse("slow:latency_ms=5,load_ms=25")
    assert name == "slow"
    assert profile == Profile(latency_ms=5, load_ms=25)
    assert Profile().load_ms == 0.0  # unchanged by default


async def test_each_request_in_flight_adds_load_ms_to_the_latency() -> None:
    with UpstreamDouble(load_ms=200) as upstream:
        # A barrier holds the three until all are in flight, so each one sees the other two
        # however slowly the machine delivers them: 2 x 200 ms each, with no latency of its own.
        upstream.faults([{"barrier": 3}] * 3)
        async with httpx.AsyncClient(base_url=upstream.url, timeout=30.0) as client:

            async def timed() -> float:
                started = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=CHAT)
                resp.raise_for_status()
                return time.perf_counter() - started

            took = await asyncio.gather(*(timed() for _ in range(3)))
        assert max(took) >= 0.4
        assert min(took) >= 0.4  # every one of them waited for the other two
        assert upstream.stats()["completed"] == 3
