"""The last hour's live traffic in figures, for the console's overview.

Read from the event log (``Store.traffic``: a bounded scan of narrow columns), not from the
Prometheus registry, so every gateway behind a load balancer shows the same figures and a
restart loses nothing. One row per attempt, as stored: a request that fell back counts once
per attempt on each target, which is what a target's load and error rate are about.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: what a request that named no route is listed under (a model or adapter called directly)
DIRECT = "(direct)"


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.requests += 1
        if row.get("status") == "error":
            self.errors += 1
        if row.get("status") == "ok" and row.get("latency_ms") is not None:
            self.latencies.append(float(row["latency_ms"]))
        self.prompt_tokens += int(row.get("prompt_tokens") or 0)
        self.completion_tokens += int(row.get("completion_tokens") or 0)

    def figures(self, window_s: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": self.requests,
            "requests_per_s": self.requests / window_s if window_s > 0 else None,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_ms": {"p50": _quantile(ordered, 0.5), "p95": _quantile(ordered, 0.95)},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def target_of(row: dict[str, Any]) -> str:
    """What served the attempt: the adapter when there was one, else the model."""
    return str(row.get("adapter") or row.get("model") or "(none)")


def summarise(
    rows: Sequence[dict[str, Any]],
    *,
    now: float,
    window_s: float,
    buckets: int = 60,
    truncated: bool = False,
) -> dict[str, Any]:
    """Per route and per target: requests, rate, errors, latency p50/p95, tokens, and a
    per-bucket series of requests, errors and p95 for charts. Offline evaluation calls and
    shadow runs are left out (they are no client's traffic)."""
    since = now - window_s
    live = [
        r
        for r in rows
        if (r.get("source") or "online") == "online" and not r.get("shadow") and r["ts"] >= since
    ]
    by_route: dict[str, _Tally] = defaultdict(_Tally)
    by_target: dict[str, _Tally] = defaultdict(_Tally)
    total = _Tally()
    width = window_s / buckets
    series: dict[str, list[_Tally]] = defaultdict(lambda: [_Tally() for _ in range(buckets)])
    for row in live:
        route = str(row.get("route") or DIRECT)
        total.add(row)
        by_route[route].add(row)
        by_target[target_of(row)].add(row)
        index = min(int((float(row["ts"]) - since) / width), buckets - 1)
        series[route][index].add(row)
    starts = [since + i * width for i in range(buckets)]
    return {
        "window_s": window_s,
        "since": since,
        "now": now,
        # true when the scan's limit cut the window short: the figures cover fewer rows
        "truncated": truncated,
        "total": total.figures(window_s),
        "routes": {name: t.figures(window_s) for name, t in sorted(by_route.items())},
        "targets": {name: t.figures(window_s) for name, t in sorted(by_target.items())},
        "series": {
            "bucket_s": width,
            "ts": starts,
            "routes": {
                name: {
                    "requests": [t.requests for t in tallies],
                    "errors": [t.errors for t in tallies],
                    "latency_p95_ms": [_quantile(sorted(t.latencies), 0.95) for t in tallies],
                }
                for name, tallies in sorted(series.items())
            },
        },
    }
