"""Accuracy and answer-letter distribution of plain, cot and medprompt on held-out questions.

Runs against a running gateway (``gateway serve``: the embedded default serves the packaged
model and the three shipped pipelines) and prints a Markdown report; ``--out`` also writes the
raw per-question results as JSON.

    gateway data import mmlu --split heldout --out heldout.jsonl
    gateway serve &
    python bench/pipelines_study.py --url http://127.0.0.1:8080 --data heldout.jsonl --limit 100

The plain request is the question with its lettered options and one instruction line; its
letter is read with the gateway's own extraction (``gateway.pipelines.answers``). cot and
medprompt report their letter in the response's ``switchboard`` object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.datasets import MCItem, read_items
from gateway.pipelines.answers import extract_answer

PIPELINES = ("plain", "cot", "medprompt")
Z95 = 1.959964


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion (sound near 0 and 1, unlike p +/- 2se)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def user_text(item: MCItem) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return f"{item.question}\n\n{options}\n\nAnswer with the letter of the correct option."


async def ask(
    client: httpx.AsyncClient, model: str, pipeline: str, item: MCItem, max_tokens: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": user_text(item)}],
        "temperature": 0,
        "switchboard": {"pipeline": pipeline},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json=body)
    seconds = time.perf_counter() - started
    resp.raise_for_status()
    data = resp.json()
    extension = data.get("switchboard") or {}
    if "answer" in extension:
        answer = extension["answer"]
    else:
        found = extract_answer(data["choices"][0]["message"]["content"] or "", item.options)
        answer = found.letter if found else None
    return {
        "id": item.id,
        "pipeline": pipeline,
        "gold": item.answer,
        "answer": answer,
        "votes": extension.get("votes"),
        "members": extension.get("members"),
        "seconds": round(seconds, 3),
        "usage": data.get("usage"),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    items = read_items(args.data, split="heldout")[: args.limit]
    results: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=900) as client:
        for pipeline in args.pipelines:
            started = time.perf_counter()

            async def one(item: MCItem, pipeline: str = pipeline) -> dict[str, Any]:
                async with gate:
                    limit = args.plain_max_tokens if pipeline == "plain" else None
                    return await ask(client, args.model, pipeline, item, limit)

            batch = await asyncio.gather(*(one(i) for i in items))
            results.extend(batch)
            print(
                f"{pipeline}: {len(batch)} questions in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
    return results


def report(results: list[dict[str, Any]], letters: str = "ABCD") -> str:
    lines = [
        "| pipeline | n | accuracy | 95% interval | answers " + " / ".join(letters) + " / none |",
        "|---|---:|---:|---|---|",
    ]
    gold = Counter(r["gold"] for r in results if r["pipeline"] == results[0]["pipeline"])
    for pipeline in dict.fromkeys(r["pipeline"] for r in results):
        rows = [r for r in results if r["pipeline"] == pipeline]
        right = sum(r["answer"] == r["gold"] for r in rows)
        low, high = wilson(right, len(rows))
        counts = Counter(r["answer"] for r in rows)
        spread = " / ".join(str(counts.get(letter, 0)) for letter in letters)
        lines.append(
            f"| {pipeline} | {len(rows)} | {right / len(rows):.1%} | {low:.1%} to {high:.1%} | "
            f"{spread} / {counts.get(None, 0)} |"
        )
    lines.append(
        f"| (gold) | {sum(gold.values())} | | | "
        + " / ".join(str(gold.get(letter, 0)) for letter in letters)
        + " / 0 |"
    )
    lines.append("")
    for pipeline in dict.fromkeys(r["pipeline"] for r in results):
        members = [m for r in results if r["pipeline"] == pipeline for m in r["members"] or []]
        if not members:
            continue
        shown = Counter(m["shown"] for m in members)
        lines.append(
            f"- {pipeline}: {len(members)} member answers by the position chosen: "
            + ", ".join(f"{letter} {shown.get(letter, 0)}" for letter in letters)
            + f", none {shown.get(None, 0)}."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL (held-out used)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--plain-max-tokens", type=int, default=64)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    parser.add_argument("--out", type=Path, help="write the per-question results here (JSON)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(f"{datetime.now(UTC):%Y-%m-%d}, {args.model}, first {args.limit} held-out items\n")
    print(report(results))


if __name__ == "__main__":
    main()
