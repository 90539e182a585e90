"""Durable mode on a real gateway process: the row is committed before the client has its answer.

``events: {durable: true}`` promises that an answered request's event is in the database (or
fsynced to the spool) by the time the answer reaches the client, streams included (the row is
in before ``data: [DONE]``). Checked the hard way: the database is read at the moment each
answer arrives, and the gateway is SIGKILLed right after a burst of answers, before any batch
timer could have helped.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.upstream import UpstreamDouble
from gateway.admission.keys import hash_key
from tests.support.servers import GatewayProcess, running_gateway

KEY = "sb-durable-test-key-0123456789"
HEADERS = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
INFERENCE_ID = "x-switchboard-inference-id"
DONE = b"data: [DONE]"


def config(upstream: str) -> str:
    # A long flush interval: only the durable path can put a row in before the answer.
    return f"""
events: {{durable: true, flush_interval_s: 30}}
auth:
  keys:
    - {{name: tests, hash: "{hash_key(KEY)}", scopes: [inference, feedback, admin]}}
models:
  m: {{engine: vllm, urls: ["{upstream}"], upstream_model: upstream-model}}
"""


def stored(home: Path, inference_id: str) -> bool:
    with sqlite3.connect(home / "events.db", timeout=10) as db:
        return (
            db.execute("SELECT 1 FROM inference_events WHERE id = ?", [inference_id]).fetchone()
            is not None
        )


def kept_ids(home: Path) -> set[str]:
    """Every event id the gateway kept: in the database or in the spool."""
    with sqlite3.connect(home / "events.db", timeout=10) as db:
        ids = {str(r[0]) for r in db.execute("SELECT id FROM inference_events")}
    spool = home / "spool" / "spool.jsonl"
    if spool.exists():
        for line in spool.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if entry.get("kind") == "event":
                ids.add(str(entry["row"]["id"]))
    return ids


def complete(gateway: GatewayProcess) -> str:
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=HEADERS, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers[INFERENCE_ID]


def stream_until_done(gateway: GatewayProcess) -> tuple[str, bool]:
    """The stream's id, and whether its row was in the database when ``[DONE]`` arrived."""
    body = {**CHAT, "stream": True}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=HEADERS, timeout=30) as resp:
        assert resp.status_code == 200
        inference_id = resp.headers[INFERENCE_ID]
        seen = b""
        for chunk in resp.iter_raw():
            seen += chunk
            if DONE in seen:
                return inference_id, stored(gateway.home, inference_id)
    raise AssertionError(f"the stream ended without [DONE]: {seen[-200:]!r}")


def test_durable_mode_commits_before_the_answer_and_survives_sigkill(tmp_path: Path) -> None:
    with (
        UpstreamDouble(chunks=4) as upstream,
        running_gateway(tmp_path / "home", config(upstream.url)) as gateway,
    ):
        home = gateway.home
        # The row is there the moment each answer is: 10 completions and 10 streams.
        missing = [i for i in (complete(gateway) for _ in range(10)) if not stored(home, i)]
        streams = [stream_until_done(gateway) for _ in range(10)]
        missing += [i for i, was_stored in streams if not was_stored]
        assert missing == [], f"{len(missing)} of 20 answered events were not in the database"

        # A burst of answers, then SIGKILL at once: every answered event was kept.
        with ThreadPoolExecutor(6) as pool:
            answered = list(pool.map(lambda _: complete(gateway), range(30)))
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(30)
        lost = set(answered) - kept_ids(home)
        assert not lost, f"{len(lost)} of 30 answered events lost to a SIGKILL"
