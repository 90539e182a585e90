"""A base model against a LoRA adapter on the same vLLM, side by side, and the hot-load time.

Runs against a gateway (``make serve``, or any gateway whose config has the adapter):

- hot load: ``POST /v1/adapters/NAME/load`` timed from outside (the admin call) and inside
  (vLLM's load call, ``last_load_s``), then the first request on the loaded adapter; either
  the adapter again after an unload, or with ``--copy-into`` a fresh copy under a new name in
  one of the gateway's registry folders (a cold load from disk, as for a new adapter);
- latency: requests one at a time, base and adapter taking turns, every request generating
  exactly ``--tokens`` tokens (vLLM's ``ignore_eos``), so both arms do the same work;
- throughput: ``--concurrency`` requests in flight, base and adapter in alternating rounds.

Every request asks a different question (``--data``, labelled multiple choice; the held-out
split by default) so neither arm is flattered by vLLM's prefix cache.

    python bench/adapters.py --url http://127.0.0.1:8080 --base smollm2 \\
        --adapter mmlu-med-demo --data heldout.jsonl --requests 20 --concurrency 8 \\
        --copy-into ~/.cache/switchboard/adapters
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import shutil
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.adapters.training_data import mc_prompt
from gateway.datasets import read_items


def prompts(path: Path) -> Iterator[str]:
    items = read_items(path, split="heldout") or read_items(path)
    return itertools.cycle([mc_prompt(item.question, item.options) for item in items])


async def complete(
    client: httpx.AsyncClient, model: str, prompt: str, tokens: int
) -> tuple[float, int]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - started
    resp.raise_for_status()
    return elapsed, int(resp.json()["usage"]["completion_tokens"])


async def hot_load(
    client: httpx.AsyncClient,
    adapter: str,
    times: int,
    tokens: int,
    questions: Iterator[str],
    copy_into: Path | None,
) -> list[tuple[float, float, float]]:
    """(admin load s, vLLM's load call s, first request s) for each load.

    vLLM's unload forgets the name but keeps the weights cached, so loading the same adapter
    again reads nothing from disk. With ``copy_into`` (a registry folder of the gateway) each
    load is of a fresh copy under a new name: a cold load from disk, as for a new adapter.
    """
    out = []
    source = _folder_of(adapter, copy_into)
    for i in range(times):
        name = adapter
        if source is not None and copy_into is not None:
            name = f"{adapter}-bench-{i}"
            _copy(source, copy_into / name)
        else:
            (await client.post(f"/v1/adapters/{adapter}/unload")).raise_for_status()
        started = time.perf_counter()
        resp = await client.post(f"/v1/adapters/{name}/load")
        elapsed = time.perf_counter() - started
        resp.raise_for_status()
        first, _ = await complete(client, name, next(questions), tokens)
        out.append((elapsed, float(resp.json()["last_load_s"]), first))
        if name != adapter and copy_into is not None:
            (await client.post(f"/v1/adapters/{name}/unload")).raise_for_status()
            shutil.rmtree(copy_into / name)
    return out


def _folder_of(adapter: str, copy_into: Path | None) -> Path | None:
    if copy_into is None:
        return None
    copy_into.mkdir(parents=True, exist_ok=True)
    for folder in (copy_into, Path("adapters")):
        if (folder / adapter / "adapter.yaml").is_file():
            return folder / adapter
    raise SystemExit(f"--copy-into: cannot find {adapter}/ in {copy_into} or ./adapters")


def _copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    manifest = yaml.safe_load((target / "adapter.yaml").read_text())
    manifest["name"] = target.name
    (target / "adapter.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


async def latency(
    client: httpx.AsyncClient, arms: list[str], questions: Iterator[str], n: int, tokens: int
) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(n):
        for arm in arms:
            elapsed, _ = await complete(client, arm, next(questions), tokens)
            seconds[arm].append(elapsed)
    return seconds


async def throughput(
    client: httpx.AsyncClient,
    arm: str,
    questions: Iterator[str],
    n: int,
    concurrency: int,
    tokens: int,
) -> float:
    """Completion tokens per second with ``concurrency`` requests in flight."""
    todo = [next(questions) for _ in range(n)]
    produced = 0

    async def worker() -> None:
        nonlocal produced
        while todo:
            _, count = await complete(client, arm, todo.pop(), tokens)
            produced += count

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return produced / (time.perf_counter() - started)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    arms = [args.base, args.adapter]
    questions = prompts(args.data)
    async with httpx.AsyncClient(base_url=args.url, timeout=600) as client:
        for arm in arms:  # warm-up: first-request costs are not part of the comparison
            await complete(client, arm, next(questions), args.tokens)
        seconds = await latency(client, arms, questions, args.requests, args.tokens)
        loads = await hot_load(
            client, args.adapter, args.loads, args.tokens, questions, args.copy_into
        )
        await complete(client, args.adapter, next(questions), args.tokens)
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.rounds):
            for arm in arms:
                rates[arm].append(
                    await throughput(
                        client, arm, questions, args.requests, args.concurrency, args.tokens
                    )
                )

    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, machine: {platform.machine()}")
    kind = "a fresh copy each time (cold)" if args.copy_into else "again after an unload"
    print(f"\nhot load of {args.adapter}, {args.loads} times, {kind}:\n")
    print("| step | median s | min s | max s |\n|---|---:|---:|---:|")
    for label, values in (
        ("POST /v1/adapters/NAME/load", [a for a, _, _ in loads]),
        ("vLLM's load call inside it", [b for _, b, _ in loads]),
        (f"first request after the load ({args.tokens} tokens)", [c for _, _, c in loads]),
    ):
        print(
            f"| {label} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |"
        )
    print(
        f"\none request at a time, {args.tokens} tokens each, {args.requests} per arm; "
        f"then {args.concurrency} in flight, {args.requests} requests x {args.rounds} rounds:\n"
    )
    print("| arm | median s | p90 s | tokens/s (one at a time) | tokens/s (concurrent) |")
    print("|---|---:|---:|---:|---:|")
    for arm in arms:
        median = statistics.median(seconds[arm])
        print(
            f"| {arm} | {median:.3f} | {p(seconds[arm], 0.9):.3f} | {args.tokens / median:.1f} | "
            f"{statistics.mean(rates[arm]):.1f} |"
        )
    ratio = statistics.median(seconds[args.adapter]) / statistics.median(seconds[args.base])
    print(f"\nadapter / base median latency: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--adapter", default="mmlu-med-demo")
    parser.add_argument("--data", type=Path, required=True, help="labelled MC JSONL")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument(
        "--copy-into",
        type=Path,
        help="a registry folder of the gateway (e.g. $GATEWAY_HOME/adapters): load fresh copies",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
