"""The SQL both stores share: tables and columns derived from the row types, the ``Store``
protocol the event log writes through, and the statements every SQL store runs.

The concrete stores (SQLite, PostgreSQL) and ``open_store`` are in ``stores``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from gateway.errors import StoreDataError, StoreError
from gateway.events.reads import EventQuery, feedback_for_sql, recent_events_sql, traffic_sql
from gateway.events.schema import (
    AnyRow,
    CaptureRow,
    FeedbackRow,
    InferenceEvent,
    column_types,
    columns,
    flag_columns,
    values_getter,
)

log = logging.getLogger(__name__)

EVENT_COLUMNS = columns(InferenceEvent)
FEEDBACK_COLUMNS = columns(FeedbackRow)
#: the largest feedback value kept (either sign): a million of them still sum exactly enough,
#: and far below where a sum overflows to inf (1.7e308 turned a variant's mean into null)
MAX_FEEDBACK_VALUE = 1e12


def _table(name: str, row_type: type[AnyRow]) -> str:
    typed = column_types(row_type)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ("
        + ", ".join(f"{c} {t}" for c, t in typed.items())
        + ")"
    )


SCHEMA = [
    _table("inference_events", InferenceEvent),
    "CREATE INDEX IF NOT EXISTS inference_events_route_ts ON inference_events (route, ts)",
    # The console's reads: recent events of every route, and the last hour's traffic.
    "CREATE INDEX IF NOT EXISTS inference_events_ts ON inference_events (ts)",
    _table("feedback", FeedbackRow),
    "CREATE INDEX IF NOT EXISTS feedback_inference ON feedback (inference_id)",
    "CREATE TABLE IF NOT EXISTS route_overrides (route TEXT PRIMARY KEY, variant TEXT NOT NULL, "
    "ts DOUBLE PRECISION NOT NULL)",
    # Every promotion, rollback and undo of an experiment (experiments/promotion.py): who
    # (auto or admin), why (the decision's reason), when; ``undoes`` names the undone action.
    "CREATE TABLE IF NOT EXISTS experiment_actions (id TEXT PRIMARY KEY, route TEXT NOT NULL, "
    "action TEXT NOT NULL, variant TEXT, actor TEXT NOT NULL, reason TEXT, "
    "ts DOUBLE PRECISION NOT NULL, undoes TEXT)",
    # Captured text of routes with `capture` (gateway/events/capture.py), by inference id.
    _table("captures", CaptureRow),
    "CREATE INDEX IF NOT EXISTS captures_route_ts ON captures (route, ts)",
]
#: the columns of ``experiment_actions``, in order
ACTION_COLUMNS = ("id", "route", "action", "variant", "actor", "reason", "ts", "undoes")


def added_columns(table: str, row_type: type[AnyRow], existing: Iterable[str]) -> list[str]:
    """The migration of a database made before some of the row's fields existed: one
    ``ALTER TABLE ... ADD COLUMN`` per missing column (old rows read NULL there, so only a
    nullable or defaulted column can be added; ``CREATE TABLE IF NOT EXISTS`` leaves an
    existing table as it was)."""
    have = set(existing)
    typed = column_types(row_type)
    return [
        f"ALTER TABLE {table} ADD COLUMN {name} {sql}"
        for name, sql in typed.items()
        if name not in have and ("NOT NULL" not in sql or "DEFAULT" in sql)
    ]


FEEDBACK_UNIQUE_INDEX = "feedback_inference_name"
#: one feedback row per (inference, metric): a database from before that keeps each pair's
#: latest row, then gains the unique index the upsert needs
FEEDBACK_UNIQUE = [
    "DELETE FROM feedback WHERE EXISTS (SELECT 1 FROM feedback newer "
    "WHERE newer.inference_id = feedback.inference_id AND newer.name = feedback.name "
    "AND (newer.ts > feedback.ts OR (newer.ts = feedback.ts AND newer.id > feedback.id)))",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {FEEDBACK_UNIQUE_INDEX} ON feedback (inference_id, name)",
]


#: the tables whose columns come from a row type, for ``added_columns``
TYPED_TABLES: tuple[tuple[str, type[AnyRow]], ...] = (
    ("inference_events", InferenceEvent),
    ("feedback", FeedbackRow),
    ("captures", CaptureRow),
)


# Errors that concern the rows written, not the database: a constraint or a value it refuses,
# a value that cannot be bound (a nested dict, an int over 64 bits, a lone surrogate).
class Store(Protocol):
    url: str

    def write_events(self, rows: Sequence[InferenceEvent]) -> None: ...
    def write_feedback(self, rows: Sequence[FeedbackRow]) -> None: ...
    def get_event(self, inference_id: str) -> dict[str, Any] | None: ...
    def events(self, route: str | None = None) -> list[dict[str, Any]]: ...
    def feedback(self, route: str | None = None) -> list[dict[str, Any]]: ...
    def set_override(self, route: str, variant: str, ts: float) -> None: ...
    def overrides(self) -> dict[str, str]: ...
    def clear_override(self, route: str) -> None: ...
    def write_action(self, action: dict[str, Any]) -> None: ...
    def actions(self, route: str | None = None) -> list[dict[str, Any]]: ...
    def recent_events(self, query: EventQuery) -> list[dict[str, Any]]: ...
    def feedback_for(self, inference_ids: Sequence[str]) -> list[dict[str, Any]]: ...
    def traffic(self, since: float, limit: int) -> list[dict[str, Any]]: ...
    def write_captures(self, rows: Sequence[CaptureRow]) -> None: ...
    def captures(self, route: str, since: float = 0.0) -> list[dict[str, Any]]: ...
    def purge_captures(self, route: str | None, before: float) -> None: ...
    def close(self) -> None: ...


_event_values = values_getter(InferenceEvent)
_feedback_values = values_getter(FeedbackRow)
_JSON = tuple(EVENT_COLUMNS.index(c) for c in ("votes", "steps"))
_capture_values = values_getter(CaptureRow)
_MESSAGES = columns(CaptureRow).index("messages")
_FLAGS = tuple(EVENT_COLUMNS.index(c) for c in flag_columns(InferenceEvent))


def event_row(event: InferenceEvent) -> tuple[Any, ...]:
    """Column values in order; votes and steps as JSON, flags as 0/1 (PostgreSQL has no
    bool->int cast)."""
    values = list(_event_values(event))
    for index in _JSON:
        if values[index] is not None:
            values[index] = json.dumps(values[index])
    for index in _FLAGS:
        if isinstance(values[index], bool):
            values[index] = int(values[index])
    return tuple(values)


def _event_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    data = dict(zip(columns, row, strict=True))
    for key in ("votes", "steps", "messages"):
        if isinstance(data.get(key), str):
            data[key] = json.loads(data[key])
    for flag in ("shadow", "stream"):
        if data.get(flag) is not None:
            data[flag] = bool(data[flag])
    return data


class SQLStore(ABC):
    """The SQL both backends share; subclasses supply the connection and the placeholder."""

    url: str
    placeholder = "?"
    #: how long a call waits for another thread's call to end before it gives up (an outage)
    lock_timeout_s = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.lock_timeout_s):
            raise StoreError(f"{self.url}: the database is busy (waited {self.lock_timeout_s} s)")
        try:
            yield
        finally:
            self._lock.release()

    @abstractmethod
    def _execute(self, sql: str, params: Iterable[Sequence[Any]] | None = None) -> None: ...

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[Any]]: ...

    def _insert_sql(self, table: str, columns: Sequence[str]) -> str:
        marks = ", ".join([self.placeholder] * len(columns))
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            "ON CONFLICT (id) DO NOTHING"
        )

    def write_events(self, rows: Sequence[InferenceEvent]) -> None:
        if rows:
            sql = self._insert_sql("inference_events", EVENT_COLUMNS)
            try:
                values = [event_row(r) for r in rows]
            except (TypeError, ValueError) as exc:  # votes that are not JSON
                raise StoreDataError(f"an event cannot be stored: {exc}") from exc
            self._execute(sql, values)

    def write_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        if rows:
            for row in rows:
                if row.value is not None and not abs(row.value) <= MAX_FEEDBACK_VALUE:
                    raise StoreDataError(
                        f"feedback {row.id}: value {row.value} is beyond +-{MAX_FEEDBACK_VALUE:g}"
                    )
            marks = ", ".join([self.placeholder] * len(FEEDBACK_COLUMNS))
            # The latest value of a metric wins; the id stays the first row's (with ids made
            # from the pair, as FeedbackRow.new makes them, it is the same id anyway).
            sql = (
                f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({marks}) "
                "ON CONFLICT (inference_id, name) DO UPDATE SET kind = excluded.kind, "
                "value = excluded.value, text = excluded.text, ts = excluded.ts "
                "WHERE excluded.ts >= feedback.ts"
            )
            self._execute(sql, [_feedback_values(r) for r in rows])

    def get_event(self, inference_id: str) -> dict[str, Any] | None:
        p = self.placeholder
        columns, rows = self._query(
            f"SELECT * FROM inference_events WHERE id = {p}", [inference_id]
        )
        return _event_dict(columns, rows[0]) if rows else None

    def events(self, route: str | None = None) -> list[dict[str, Any]]:
        where, params = (f" WHERE route = {self.placeholder}", [route]) if route else ("", [])
        columns, rows = self._query(f"SELECT * FROM inference_events{where} ORDER BY ts", params)
        return [_event_dict(columns, r) for r in rows]

    def feedback(self, route: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT f.* FROM feedback f JOIN inference_events e ON e.id = f.inference_id"
        params: list[Any] = []
        if route:
            sql += f" WHERE e.route = {self.placeholder}"
            params.append(route)
        columns, rows = self._query(sql + " ORDER BY f.ts", params)
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def set_override(self, route: str, variant: str, ts: float) -> None:
        p = self.placeholder
        self._execute(
            f"INSERT INTO route_overrides (route, variant, ts) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (route) DO UPDATE SET variant = excluded.variant, ts = excluded.ts",
            [(route, variant, ts)],
        )

    def overrides(self) -> dict[str, str]:
        _, rows = self._query("SELECT route, variant FROM route_overrides")
        return {str(r[0]): str(r[1]) for r in rows}

    def clear_override(self, route: str) -> None:
        self._execute(f"DELETE FROM route_overrides WHERE route = {self.placeholder}", [(route,)])

    def write_action(self, action: dict[str, Any]) -> None:
        """One experiment action (its keys are ``ACTION_COLUMNS``); an id already there is
        kept as it was (an automatic action's id is fixed, so it is taken once)."""
        sql = self._insert_sql("experiment_actions", ACTION_COLUMNS)
        self._execute(sql, [tuple(action.get(c) for c in ACTION_COLUMNS)])

    def actions(self, route: str | None = None) -> list[dict[str, Any]]:
        """Experiment actions, oldest first."""
        where, params = (f" WHERE route = {self.placeholder}", [route]) if route else ("", [])
        columns, rows = self._query(
            f"SELECT * FROM experiment_actions{where} ORDER BY ts, id", params
        )
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def recent_events(self, query: EventQuery) -> list[dict[str, Any]]:
        columns, rows = self._query(*recent_events_sql(query, self.placeholder))
        return [_event_dict(columns, r) for r in rows]

    def feedback_for(self, inference_ids: Sequence[str]) -> list[dict[str, Any]]:
        statement = feedback_for_sql(inference_ids, self.placeholder)
        columns, rows = self._query(*statement) if statement else ([], [])
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def traffic(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Oldest first: the newest ``limit`` events since ``since`` (reads.traffic_sql)."""
        columns, rows = self._query(*traffic_sql(since, limit, self.placeholder))
        return [_event_dict(columns, r) for r in reversed(rows)]

    def write_captures(self, rows: Sequence[CaptureRow]) -> None:
        if rows:
            values = [list(_capture_values(r)) for r in rows]
            for row in values:
                row[_MESSAGES] = json.dumps(row[_MESSAGES])
            self._execute(self._insert_sql("captures", columns(CaptureRow)), values)

    def captures(self, route: str, since: float = 0.0) -> list[dict[str, Any]]:
        """A route's captures since ``since``, oldest first, with their event's status."""
        p = self.placeholder
        cols, rows = self._query(
            "SELECT c.*, e.status AS status, e.source AS source FROM captures c "
            f"LEFT JOIN inference_events e ON e.id = c.id WHERE c.route = {p} AND c.ts >= {p} "
            "ORDER BY c.ts, c.id",
            [route, since],
        )
        return [_event_dict(cols, r) for r in rows]

    def purge_captures(self, route: str | None, before: float) -> None:
        """Delete a route's captures older than ``before`` (``None``: of every route)."""
        p = self.placeholder
        if route is None:
            self._execute(f"DELETE FROM captures WHERE ts < {p}", [(before,)])
        else:
            self._execute(f"DELETE FROM captures WHERE route = {p} AND ts < {p}", [(route, before)])
