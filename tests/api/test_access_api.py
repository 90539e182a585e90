"""Access and limits through the API: keys and scopes, request bounds, rates, concurrency."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.admission.keys import hash_key
from gateway.errors import UpstreamRejectedError
from gateway.settings import Settings
from tests.support.apps import AppFactory
from tests.support.fakes import FakeEngine

USER_KEY = "sb-user-key-for-tests"
ADMIN_KEY = "sb-admin-key-for-tests"
ENV_KEY = "sb-env-key-for-tests"

KEYS = f"""
auth:
  keys:
    - {{name: app, hash: "{hash_key(USER_KEY)}", scopes: [inference]}}
    - {{name: ops, env: TEST_OPS_KEY, scopes: [admin, inference, feedback]}}
models:
  fake: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
"""

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class SlowEngine(FakeEngine):
    """Answers after ``delay`` seconds, or once ``gate`` is set; counts the calls at once."""

    def __init__(self, delay: float = 0.0, gate: asyncio.Event | None = None) -> None:
        super().__init__("fake")
        self.delay = delay
        self.gate = gate
        self.running = 0
        self.peak = 0

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(self.delay)
            return await super().chat(body)
        finally:
            self.running -= 1


def events(home: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(home / "events.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM inference_events ORDER BY ts")]


@pytest.fixture(autouse=True)
def _ops_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPS_KEY", ADMIN_KEY)


async def test_missing_and_wrong_keys_are_401_in_openai_shape(gateway: AppFactory) -> None:
    async with gateway(config=KEYS) as (_, raw):
        missing = await raw.post("/v1/chat/completions", json=CHAT)
        wrong = await raw.post("/v1/chat/completions", json=CHAT, headers=bearer("sb-nope"))
        models = await raw.get("/v1/models")
    for resp in (missing, wrong, models):
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert wrong.json()["error"]["code"] == "invalid_api_key"


async def test_scopes_guard_admin_and_feedback_endpoints(gateway: AppFactory) -> None:
    async with gateway(config=KEYS) as (_, raw):
        ok = await raw.post("/v1/chat/completions", json=CHAT, headers=bearer(USER_KEY))
        assert ok.status_code == 200
        for method, path in [
            ("GET", "/v1/adapters"),
            ("GET", "/metrics"),
            ("GET", "/v1/experiments/none"),
            ("POST", "/v1/feedback"),
        ]:
            refused = await raw.request(method, path, headers=bearer(USER_KEY), json={})
            assert refused.status_code == 403, path
            assert refused.json()["error"]["type"] == "permission_error"
            assert refused.json()["error"]["code"] == "insufficient_scope"
        admin = await raw.get("/metrics", headers=bearer(ADMIN_KEY))
        assert admin.status_code == 200
        # Health probes stay open: load balancers carry no keys.
        assert (await raw.get("/health")).status_code == 200


async def test_the_environment_key_has_every_scope(
    gateway: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", ENV_KEY)
    async with gateway(config=KEYS) as (_, raw):
        assert (await raw.get("/v1/adapters", headers=bearer(ENV_KEY))).status_code == 200
        chat = await raw.post("/v1/chat/completions", json=CHAT, headers=bearer(ENV_KEY))
        assert chat.status_code == 200


async def test_auth_is_off_without_keys(gateway: AppFactory) -> None:
    async with gateway() as (client, raw):
        await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}]
        )
        assert (await raw.get("/v1/adapters")).status_code == 200


async def test_keys_never_reach_logs_or_events(
    gateway: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = FakeEngine("fake", fail_with=UpstreamRejectedError("bad request upstream"))
    async with gateway({"fake": failing}, config=KEYS) as (_, raw):
        await raw.post("/v1/chat/completions", json=CHAT, headers=bearer(USER_KEY))
        await raw.post("/v1/chat/completions", json=CHAT, headers=bearer(USER_KEY + "x"))
        await raw.post("/v1/chat/completions", json={"model": 1}, headers=bearer(USER_KEY))
    rows = events(tmp_path / "home")
    assert len(rows) >= 3  # the refused requests are logged too
    assert any(r["http_status"] == 401 for r in rows)
    dumped = repr(rows) + caplog.text
    for secret in (USER_KEY, ADMIN_KEY):
        assert secret not in dumped
    # Nor in the database file's bytes (nothing hides in a column the query left out).
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert USER_KEY.encode() not in path.read_bytes(), path


async def test_messages_count_and_total_characters_are_bounded(gateway: AppFactory) -> None:
    config = """
limits: {max_messages: 3, max_chars: 50}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""
    async with gateway(config=config) as (_, raw):
        many = [{"role": "user", "content": "x"}] * 4
        resp = await raw.post("/v1/chat/completions", json={"model": "fake", "messages": many})
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "messages"
        assert "at most 3" in resp.json()["error"]["message"]
        parts = [{"type": "text", "text": "y" * 30}, {"type": "text", "text": "z" * 30}]
        long = [{"role": "user", "content": parts}]
        resp = await raw.post("/v1/chat/completions", json={"model": "fake", "messages": long})
        assert resp.status_code == 400
        assert "60 characters" in resp.json()["error"]["message"]
        fits = [{"role": "user", "content": "y" * 50}]
        resp = await raw.post("/v1/chat/completions", json={"model": "fake", "messages": fits})
        assert resp.status_code == 200


async def test_requests_per_minute_hold_under_a_concurrent_burst(gateway: AppFactory) -> None:
    config = """
limits: {requests_per_minute: 5}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""
    async with gateway({"fake": SlowEngine(0.05)}, config=config) as (_, raw):
        burst = await asyncio.gather(
            *(raw.post("/v1/chat/completions", json=CHAT) for _ in range(20))
        )
    codes = [r.status_code for r in burst]
    assert codes.count(200) == 5
    assert codes.count(429) == 15
    refused = next(r for r in burst if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"


async def test_rates_are_per_key_with_per_key_overrides(
    gateway: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = f"""
limits: {{requests_per_minute: 2}}
auth:
  keys:
    - {{name: small, hash: "{hash_key(USER_KEY)}", scopes: [inference]}}
    - {{name: big, hash: "{hash_key(ADMIN_KEY)}", scopes: [inference], requests_per_minute: 4}}
models:
  fake: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
"""
    async with gateway(config=config) as (_, raw):

        async def codes(key: str, n: int) -> list[int]:
            return [
                (await raw.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status_code
                for _ in range(n)
            ]

        assert await codes(USER_KEY, 3) == [200, 200, 429]
        assert await codes(ADMIN_KEY, 5) == [200, 200, 200, 200, 429]


async def test_tokens_per_minute_are_reserved_before_the_request_runs(
    gateway: AppFactory,
) -> None:
    config = """
limits: {tokens_per_minute: 1000}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""
    body = {**CHAT, "max_tokens": 400}
    async with gateway({"fake": SlowEngine(0.05)}, config=config) as (_, raw):
        # Two 400-token reservations fit in 1000, the third does not, even in one burst.
        burst = await asyncio.gather(
            *(raw.post("/v1/chat/completions", json=body) for _ in range(3))
        )
        assert sorted(r.status_code for r in burst) == [200, 200, 429]
        # The answers used 5 tokens each: the settled reservations free the bucket again.
        again = await raw.post("/v1/chat/completions", json=body)
        assert again.status_code == 200


async def test_overload_is_refused_at_once_with_503(gateway: AppFactory) -> None:
    config = """
limits: {max_concurrency: 2}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""
    engine = SlowEngine(gate=asyncio.Event())
    assert engine.gate is not None
    async with gateway({"fake": engine}, config=config) as (_, raw):
        slow = [asyncio.create_task(raw.post("/v1/chat/completions", json=CHAT)) for _ in range(2)]
        while engine.running < 2:
            await asyncio.sleep(0.01)
        # The two slow ones hold their slots until the gate opens: a third queued behind them
        # would wait forever (the timeout), one refused at once answers.
        ask = raw.post("/v1/chat/completions", json=CHAT)
        refused = await asyncio.wait_for(ask, timeout=30)
        engine.gate.set()
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        # The slots are free again once the requests end.
        assert (await raw.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "gateway_overloaded"
    assert engine.peak == 2


def test_config_names_an_unset_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.loader import parse_config
    from gateway.errors import ConfigError
    from gateway.resolve import resolve

    monkeypatch.delenv("TEST_OPS_KEY")
    config = parse_config(KEYS, "gw.yaml")
    with pytest.raises(ConfigError) as info:
        resolve(config, Settings())
    text = str(info.value)
    assert "gw.yaml" in text
    assert "auth.keys[1].env" in text
    assert "TEST_OPS_KEY" in text


def test_config_refuses_a_key_with_both_or_neither_hash_and_env() -> None:
    from gateway.config.loader import parse_config
    from gateway.errors import ConfigError

    for entry in ("{name: a, scopes: [admin]}", f'{{name: a, hash: "{hash_key("k")}", env: K}}'):
        text = f"auth: {{keys: [{entry}]}}\nmodels: {{m: {{engine: vllm, urls: [http://x]}}}}"
        with pytest.raises(ConfigError, match=r"auth\.keys\.0"):
            parse_config(text, "gw.yaml")


async def test_openai_client_sees_typed_errors(gateway: AppFactory) -> None:
    async with gateway(config=KEYS) as (_, raw):
        keyed = openai.AsyncOpenAI(
            base_url="http://gw/v1", api_key="sb-wrong", http_client=raw, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            await keyed.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "x"}]
            )
