"""The spool and the quarantine file: where rows wait, on disk and fsynced, for the database.

The event log appends a batch to the spool when the store is down and replays it when the store
is back; rows the store refuses as data, and spool lines torn by a crash, go to the quarantine
file beside it, where an operator can inspect, fix and replay them. One JSON object a line:
``{"kind": "event" | "feedback" | "capture", "row": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import StoreDataError
from gateway.events.schema import CaptureRow, FeedbackRow, InferenceEvent, as_dict, from_dict

SPOOL_NAME = "spool.jsonl"
QUARANTINE_NAME = "quarantine.jsonl"

#: any row the spool holds
SpooledRow = InferenceEvent | FeedbackRow | CaptureRow
#: a row as the spool and the quarantine file hold it (a JSON object)
Line = dict[str, Any]


@dataclass
class SpoolContents:
    """What a spool file holds, by kind; lines that could not be read set aside."""

    events: list[InferenceEvent] = field(default_factory=list)
    feedback: list[FeedbackRow] = field(default_factory=list)
    captures: list[CaptureRow] = field(default_factory=list)
    unreadable: list[tuple[Line, StoreDataError]] = field(default_factory=list)


class Spool:
    """The two files under one folder, each appended to under its own lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / SPOOL_NAME
        self.quarantine_path = folder / QUARANTINE_NAME
        self.lock = asyncio.Lock()
        self._quarantine_lock = asyncio.Lock()

    async def append(self, kind: str, rows: Sequence[SpooledRow]) -> None:
        lines = "".join(
            json.dumps({"kind": _kind(r, kind), "row": as_dict(r)}, default=str) + "\n"
            for r in rows
        )
        async with self.lock:
            await asyncio.to_thread(_append_synced, self.path, lines)

    async def quarantine(self, kind: str, refused: Sequence[tuple[Line, StoreDataError]]) -> None:
        now = time.time()
        lines = "".join(
            json.dumps({"kind": kind, "row": r, "error": str(e), "ts": now}, default=str) + "\n"
            for r, e in refused
        )
        async with self._quarantine_lock:
            await asyncio.to_thread(_append_synced, self.quarantine_path, lines)

    async def read(self) -> SpoolContents | None:
        """The spool's rows (the caller holds ``lock``); None when there is no spool."""
        if not self.path.exists():
            return None
        contents = SpoolContents()
        for line in filter(None, (await asyncio.to_thread(self.path.read_text)).splitlines()):
            row = spool_entry(line)
            if isinstance(row, InferenceEvent):
                contents.events.append(row)
            elif isinstance(row, FeedbackRow):
                contents.feedback.append(row)
            elif isinstance(row, CaptureRow):
                contents.captures.append(row)
            else:
                contents.unreadable.append(
                    ({"line": line}, StoreDataError("unreadable spool line"))
                )
        return contents

    def find_event(self, inference_id: str) -> InferenceEvent | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text().splitlines():
            row = spool_entry(line)
            if isinstance(row, InferenceEvent) and row.id == inference_id:
                return row
        return None


def _kind(row: SpooledRow, default: str) -> str:
    return "capture" if isinstance(row, CaptureRow) else default


def spool_entry(line: str) -> SpooledRow | None:
    """A spool line's row; None for a line that cannot be read (torn, or not a row)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("row"), dict):
        return None
    kind, row = entry.get("kind"), entry["row"]
    try:
        if kind == "event":
            return from_dict(InferenceEvent, row)
        if kind == "feedback":
            return from_dict(FeedbackRow, row)
        if kind == "capture":
            return from_dict(CaptureRow, row)
    except TypeError:  # a required column is missing
        return None
    return None


def _append_synced(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
