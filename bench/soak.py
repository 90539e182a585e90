"""A bounded soak: a gateway under mixed traffic with client aborts and upstream resets.

It runs ``gateway serve`` in front of the upstream double for ``--duration`` seconds with
``--concurrency`` clients, a mix of plain requests, streams, streams the client abandons
midway, requests the client gives up on, and upstream faults (resets before and during a
stream, 503s). Before and after it reads the gateway's memory (RSS) and open files, and at the
end checks that every request reached the event log. It fails (exit 1) when open files grew,
memory grew past ``--max-rss-growth-mb``, or requests went unlogged.

    python -m bench.soak --duration 60 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from bench.servers import start_switchboard
from bench.upstream import UpstreamDouble

console = Console()

CONFIG = """
reliability: {{deadline_s: 10, stream_gap_s: 2, cooldown_failures: 1000}}
limits: {{max_concurrency: 1024}}
events: {{flush_interval_s: 0.2}}
models:
  m: {{engine: vllm, urls: ["{url}"], upstream_model: upstream-model}}
"""
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
#: the share of each kind of request in the mix
MIX = {
    "plain": 40,
    "stream": 20,
    "stream-abandoned": 10,
    "request-abandoned": 10,
    "upstream-reset": 10,
    "stream-reset": 5,
    "upstream-503": 5,
}


def footprint(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {
        "rss_mb": process.memory_info().rss / 2**20,
        "open_files": process.num_fds(),
        "connections": len(process.net_connections(kind="tcp")),
    }


async def one(client: httpx.AsyncClient, kind: str, upstream: UpstreamDouble) -> str:
    """Run one request of ``kind``; returns how it ended."""
    if kind in ("upstream-reset", "stream-reset", "upstream-503"):
        faults: dict[str, dict[str, Any]] = {
            "upstream-reset": {"reset": True},
            "stream-reset": {"stream_reset_after": 2},
            "upstream-503": {"status": 503},
        }
        await asyncio.to_thread(upstream.faults, [faults[kind]])
    stream = kind.startswith("stream")
    body = {**BODY, "stream": stream}
    try:
        if kind == "request-abandoned":
            await asyncio.to_thread(upstream.faults, [{"latency_ms": 2000}])
            await client.post("/v1/chat/completions", json=body, timeout=0.2)
            return "answered"
        if not stream:
            resp = await client.post("/v1/chat/completions", json=body)
            return f"http {resp.status_code}"
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: ")
                if kind == "stream-abandoned" and seen == 2:
                    return "abandoned"
            return "stream done" if seen else f"http {resp.status_code}"
    except httpx.TimeoutException:
        return "abandoned"
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def load(
    url: str, upstream: UpstreamDouble, duration_s: float, concurrency: int
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    kinds, weights = zip(*MIX.items(), strict=True)
    rng = random.Random(0)
    stop_at = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                kind = rng.choices(kinds, weights)[0]
                outcomes[f"{kind}: {await one(client, kind, upstream)}"] += 1
                outcomes["requests"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def logged(home: Path) -> int:
    with sqlite3.connect(home / "events.db") as db:
        # One row per attempt; a retried request has several, so count first attempts.
        return int(
            db.execute("SELECT COUNT(*) FROM inference_events WHERE attempt = 0").fetchone()[0]
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-rss-growth-mb", type=float, default=30.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, UpstreamDouble(chunks=8) as upstream:
        workdir = Path(tmp)
        config = workdir / "gateway.yaml"
        config.write_text(CONFIG.format(url=upstream.url))
        cpus = os.sched_getaffinity(0)
        gateway = start_switchboard(workdir, cpus, upstream.url, config=config)
        home = workdir / "switchboard-home"
        try:
            asyncio.run(load(gateway.url, upstream, 5, args.concurrency))  # warm-up
            time.sleep(1)
            before = footprint(gateway.pid)
            rows_before = logged(home)
            started = time.monotonic()
            outcomes = asyncio.run(load(gateway.url, upstream, args.duration, args.concurrency))
            took = time.monotonic() - started
            time.sleep(3)  # streams and writes in flight settle
            after = footprint(gateway.pid)
            upstream_stats = upstream.stats()
        finally:
            gateway.stop(timeout_s=60)  # SIGTERM: the event log is flushed before it exits
        rows = logged(home) - rows_before

    table = Table(title=f"soak: {args.duration:g} s, {args.concurrency} clients")
    table.add_column("measure")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in before:
        table.add_row(key, f"{before[key]:.1f}", f"{after[key]:.1f}")
    console.print(table)
    for outcome, count in sorted(outcomes.items()):
        console.print(f"  {outcome}: {count}")
    console.print(f"  rate: {outcomes['requests'] / took:.0f} requests/s")
    console.print(f"  upstream saw {upstream_stats['disconnected']} client disconnects")
    console.print(f"  events logged (first attempts): {rows}")

    problems = []
    if after["open_files"] > before["open_files"] + 5:
        problems.append(f"open files grew from {before['open_files']} to {after['open_files']}")
    if after["rss_mb"] - before["rss_mb"] > args.max_rss_growth_mb:
        problems.append(f"memory grew by {after['rss_mb'] - before['rss_mb']:.1f} MB")
    if rows < outcomes["requests"]:
        problems.append(f"{outcomes['requests'] - rows} requests are missing from the event log")
    for problem in problems:
        console.print(f"[red]FAIL[/red] {problem}")
    if not problems:
        console.print("[green]OK[/green] memory and open files flat, every request logged")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
