"""One write of rows to the store, and what it came to: written, refused as data, or left
unwritten by an outage. Nothing raises: the event log decides what to spool and quarantine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.errors import StoreDataError, StoreError
from gateway.events.schema import CaptureRow, FeedbackRow, InferenceEvent, as_dict
from gateway.events.spool import Line

log = logging.getLogger("gateway.events.log")

Row = TypeVar("Row", InferenceEvent, FeedbackRow, CaptureRow)


@dataclass
class Stored(Generic[Row]):
    """What writing some rows came to: written, refused as data, or left by an outage."""

    written: int = 0
    refused: list[tuple[Row, StoreDataError]] = field(default_factory=list)
    outage: StoreError | None = None
    unwritten: list[Row] = field(default_factory=list)

    def refused_lines(self) -> list[tuple[Line, StoreDataError]]:
        return [(as_dict(row), exc) for row, exc in self.refused]


async def store_rows(write: Callable[[Sequence[Row]], None], rows: list[Row]) -> Stored[Row]:
    """Write ``rows``; a batch refused as data is written again row by row, to find the
    rows at fault. Nothing raises: an outage is reported with the rows it left unwritten."""
    stored: Stored[Row] = Stored()
    try:
        await asyncio.to_thread(write, rows)
    except StoreDataError as exc:
        if len(rows) == 1:
            stored.refused.append((rows[0], exc))
            return stored
    except StoreError as exc:
        stored.outage, stored.unwritten = exc, rows
        return stored
    except Exception as exc:  # a store bug must not lose the rows: taken as an outage
        log.exception("the event store failed unexpectedly")
        stored.outage, stored.unwritten = StoreError(f"{type(exc).__name__}: {exc}"), rows
        return stored
    else:
        stored.written = len(rows)
        return stored
    for index, row in enumerate(rows):
        try:
            await asyncio.to_thread(write, [row])
        except StoreDataError as exc:
            stored.refused.append((row, exc))
        except StoreError as exc:
            stored.outage, stored.unwritten = exc, rows[index:]
            break
        else:
            stored.written += 1
    return stored
