"""The console's reads of the event log, as SQL both stores run (SQLite and PostgreSQL).

Every statement is bounded by a LIMIT, and filters by columns that have an index (``ts``,
``route, ts``, ``feedback.inference_id``), so a page of the console costs the same on a
small log and on a large one. Values are always bound parameters, never formatted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: the most rows one read of recent events returns, whatever the caller asks
MAX_ROWS = 10_000
#: the most inference ids one feedback read joins
MAX_IDS = 1_000
#: the columns the traffic summary reads (not votes or error messages: a narrow scan)
TRAFFIC_COLUMNS = (
    "ts", "route", "variant", "model", "adapter", "status", "latency_ms",
    "prompt_tokens", "completion_tokens", "shadow", "source",
)  # fmt: skip

Statement = tuple[str, list[Any]]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of ``recent_events``: every one that is set must match; newest first."""

    route: str | None = None
    variant: str | None = None
    #: the model or the adapter that served the attempt
    target: str | None = None
    status: str | None = None
    source: str | None = None
    key_hash: str | None = None
    #: every attempt of one client request carries it
    request_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


def recent_events_sql(query: EventQuery, p: str) -> Statement:
    """Events matching ``query``, newest first, at most ``query.limit`` (and ``MAX_ROWS``)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("route", "variant", "status", "source", "key_hash", "request_id"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = {p}")
            params.append(value)
    if query.target is not None:
        clauses.append(f"(model = {p} OR adapter = {p})")
        params += [query.target, query.target]
    if query.since is not None:
        clauses.append(f"ts >= {p}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"ts <= {p}")
        params.append(query.until)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(max(1, min(query.limit, MAX_ROWS)))
    return f"SELECT * FROM inference_events{where} ORDER BY ts DESC LIMIT {p}", params


def feedback_for_sql(inference_ids: Sequence[str], p: str) -> Statement | None:
    """The feedback on these inferences (the first ``MAX_IDS``), oldest first; None for none."""
    ids = list(dict.fromkeys(inference_ids))[:MAX_IDS]
    if not ids:
        return None
    marks = ", ".join([p] * len(ids))
    return f"SELECT * FROM feedback WHERE inference_id IN ({marks}) ORDER BY ts", ids


def traffic_sql(since: float, limit: int, p: str) -> Statement:
    """The narrow columns of the newest ``limit`` events since ``since``, newest first."""
    return (
        f"SELECT {', '.join(TRAFFIC_COLUMNS)} FROM inference_events WHERE ts >= {p} "
        f"ORDER BY ts DESC LIMIT {p}",
        [since, max(1, limit)],
    )
