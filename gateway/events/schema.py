"""The event log's two rows, typed: one ``InferenceEvent`` per attempt, one ``FeedbackRow`` per
feedback. Their fields are the tables' columns: the stores derive their DDL and INSERTs from
them (``columns``, ``column_types``), so a column is declared once, here.

Slotted dataclasses, built once per attempt on the hot path: no dict per request, and attribute
access (``operator.attrgetter`` over the fields) to turn a row into the values of an INSERT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(slots=True, kw_only=True)
class InferenceEvent:
    """One attempt of one request (or one refused request): a row of ``inference_events``."""

    id: str
    ts: float
    route: str | None = None
    variant: str | None = None
    #: how the variant was chosen: sticky, random, pinned, promoted, direct, offline or shadow
    assignment: str | None = None
    model: str | None = None
    adapter: str | None = None
    pipeline: str | None = None
    key_hash: str | None = None
    shadow: bool = False
    attempt: int | None = None
    fallback_from: str | None = None
    stream: bool | None = None
    #: ok, error or cancelled
    status: str
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    calls: int | None = None
    cost: float | None = None
    answer: str | None = None
    #: stored as JSON text
    votes: dict[str, int] | None = None
    #: online (live traffic) or offline (an evaluation run)
    source: str = "online"
    run_id: str | None = None
    #: shared by every attempt of one client request (a shadow has its own): what intention to
    #: treat groups by. Last, so that a database from before it gains it as its last column.
    request_id: str | None = None
    #: a cascade's steps, in order (variant, confidence, accepted, calls, tokens, cost), as JSON
    steps: list[Any] | None = None
    #: the index of the cascade step that answered
    cascade_step: int | None = None


@dataclass(slots=True, kw_only=True)
class CaptureRow:
    """A captured request's text (redacted): a row of ``captures``, keyed by inference id.

    Only routes with ``capture`` write these (gateway/events/capture.py): user content at rest.
    """

    #: the inference id of the event it belongs to
    id: str
    ts: float
    route: str | None = None
    variant: str | None = None
    #: the request's messages (role and text), as JSON
    messages: list[Any]
    #: the response's text
    response: str | None = None
    answer: str | None = None
    #: the answer's vote share (voting pipelines) or letter probability (cascade steps)
    confidence: float | None = None


@dataclass(slots=True, kw_only=True)
class FeedbackRow:
    """One metric value (or comment) on one inference: a row of ``feedback``."""

    id: str
    inference_id: str
    name: str
    kind: str
    value: float | None = None
    text: str | None = None
    ts: float

    @classmethod
    def new(
        cls, *, inference_id: str, name: str, kind: str, value: float | None, text: str | None
    ) -> FeedbackRow:
        """A new feedback row: its id and time are given here, the one place rows are made.

        The id is the (inference, metric) pair's: feedback is one row per pair (the stores
        upsert it), and a replayed POST answers the same id.
        """
        pair = hashlib.sha256(f"{inference_id}\0{name}".encode()).hexdigest()[:32]
        return cls(
            id=f"fb-{pair}",
            inference_id=inference_id,
            name=name,
            kind=kind,
            value=value,
            text=text,
            ts=time.time(),
        )


Row = TypeVar("Row", InferenceEvent, FeedbackRow, CaptureRow)
AnyRow = InferenceEvent | FeedbackRow | CaptureRow


def columns(row_type: type[AnyRow]) -> tuple[str, ...]:
    """The table's columns, in the order of the fields."""
    return tuple(f.name for f in dataclasses.fields(row_type))


_SQL_TYPES: Mapping[type, str] = {
    str: "TEXT",
    float: "DOUBLE PRECISION",
    int: "INTEGER",
    bool: "INTEGER",  # 0/1: PostgreSQL has no bool->int cast, SQLite no bool
    dict: "TEXT",  # JSON
    list: "TEXT",  # JSON
}


def column_types(row_type: type[AnyRow]) -> dict[str, str]:
    """Each column's SQL type, from its field's annotation.

    ``id`` is the primary key (replays insert with ``ON CONFLICT (id) DO NOTHING``). A field
    that can be neither None nor left out is NOT NULL; a flag is NOT NULL with its default.
    """
    hints = typing.get_type_hints(row_type)
    types_: dict[str, str] = {}
    for f in dataclasses.fields(row_type):
        if f.name == "id":
            types_[f.name] = "TEXT PRIMARY KEY"
            continue
        base, optional = _unwrap(hints[f.name])
        sql = _SQL_TYPES[base]
        if base is bool and not optional and isinstance(f.default, bool):
            sql += f" NOT NULL DEFAULT {int(f.default)}"
        elif not optional and f.default is dataclasses.MISSING:
            sql += " NOT NULL"
        types_[f.name] = sql
    return types_


def flag_columns(row_type: type[AnyRow]) -> tuple[str, ...]:
    """The columns stored as 0/1."""
    hints = typing.get_type_hints(row_type)
    return tuple(name for name in columns(row_type) if _unwrap(hints[name])[0] is bool)


def _unwrap(hint: Any) -> tuple[type, bool]:
    """The annotation's type without ``None``, and whether it allowed ``None``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        assert len(rest) == 1, f"a column holds one type, not {hint}"
        base, _ = _unwrap(rest[0])
        return base, True
    origin = typing.get_origin(hint)
    return (origin if origin is not None else hint), False


def values_getter(row_type: type[Row]) -> Callable[[Row], tuple[Any, ...]]:
    """A function from a row to its column values in order (one C call: ``attrgetter``)."""
    getter: Callable[[Row], tuple[Any, ...]] = operator.attrgetter(*columns(row_type))
    return getter


def as_dict(row: AnyRow) -> dict[str, Any]:
    """The row as a dict of its columns (for the spool and the quarantine: JSON lines)."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


def from_dict(row_type: type[Row], data: Mapping[str, Any]) -> Row:
    """A row from a dict (a spooled line, a stored row); keys that are not columns are
    ignored. Raises ``TypeError`` when a required column is missing."""
    names = columns(row_type)
    return row_type(**{k: v for k, v in data.items() if k in names})
