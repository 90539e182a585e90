"""An experiment's decision as it stood at earlier times: the series the console plots.

Each point is ``analysis.analyse`` run on the events and feedback that existed at that time (a
prefix of the log), so the series is the product's own figures, not a second implementation.
The intervals are always valid (confidence sequences), so drawing them after every look is
exactly what they are for. The number of points is bounded, so the cost is a fixed number of
analyses however long the experiment runs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from gateway.config.routes import RouteSpec
from gateway.experiments.analysis import analyse

MAX_POINTS = 60


def cut_times(events: Sequence[dict[str, Any]], route: str, points: int) -> list[float]:
    """Times at evenly spaced counts of the route's live requests; the last is the newest."""
    times = sorted(
        float(e["ts"])
        for e in events
        if e.get("route") == route
        and (e.get("source") or "online") == "online"
        and not e.get("shadow")
    )
    if not times:
        return []
    points = max(1, min(points, MAX_POINTS, len(times)))
    indices = sorted({round((len(times) - 1) * (i + 1) / points) for i in range(points)})
    return [times[i] for i in indices]


def history(
    route: str,
    spec: RouteSpec,
    events: Sequence[dict[str, Any]],
    feedback: Sequence[dict[str, Any]],
    *,
    points: int = 30,
    promoted: str | None = None,
) -> dict[str, Any]:
    """The decision, the primary comparisons and the guardrails at up to ``points`` times.

    The last point counts every row, feedback given after the newest request included, so it
    agrees with ``GET /v1/experiments/{route}``.
    """
    by_time = sorted(events, key=lambda e: float(e["ts"]))
    event_ts = [float(e["ts"]) for e in by_time]
    fb_by_time = sorted(feedback, key=lambda f: float(f["ts"]))
    feedback_ts = [float(f["ts"]) for f in fb_by_time]
    cuts = cut_times(by_time, route, points)
    out: list[dict[str, Any]] = []
    for k, cut in enumerate(cuts):
        last = k == len(cuts) - 1
        rows = by_time if last else by_time[: bisect.bisect_right(event_ts, cut)]
        given = fb_by_time if last else fb_by_time[: bisect.bisect_right(feedback_ts, cut)]
        report = analyse(route, spec, rows, given, promoted=promoted if last else None)
        out.append(_point(cut, report))
    return {"route": route, "points": out, "max_points": MAX_POINTS}


def _point(ts: float, report: dict[str, Any]) -> dict[str, Any]:
    decision = report["decision"]
    return {
        "ts": ts,
        "units": {name: v["units"] for name, v in report["variants"].items()},
        "requests": {name: v["n"] for name, v in report["variants"].items()},
        "status": decision["status"],
        "winner": decision["winner"],
        "reason": decision["reason"],
        "comparisons": [
            {
                "variant": c["variant"],
                "against": c["against"],
                "metric": c["metric"],
                "difference": c["difference"],
                "ci95": c["ci95"],
                "p_adjusted": c.get("p_adjusted"),
            }
            for c in report["comparisons"]
            if c["primary"]
        ],
        "guardrails": [
            {
                "metric": g["metric"],
                "variant": g["variant"],
                "worse_by": g["worse_by"],
                "ci95": g["ci95"],
                "margin": g["margin"],
                "breach": g["breach"],
            }
            for g in report["guardrails"]
        ],
        "sample_ratio_p": decision.get("sample_ratio_p"),
    }
