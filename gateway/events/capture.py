"""Capture: a sample of a route's requests and responses, as text, beside their events.

Opt-in per route (``capture:`` in gateway.yaml): off by default, because what it keeps is user
content at rest. Each redaction rule is applied to every text here, before the row exists, so
redacted text never reaches the queue, the spool or the database. Rows go through the event
log's queue and batches (``EventLog.record_capture``): capturing never waits on a database.
Old rows are deleted at the first capture after start and then hourly (``retention_days``),
and by ``gateway datasets export`` before it reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config.loop import CaptureSpec
from gateway.config.routes import RouteSpec
from gateway.events.log import EventLog
from gateway.events.schema import CaptureRow, InferenceEvent
from gateway.events.sql import Store

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
#: how often a running gateway deletes expired captures
PURGE_EVERY_S = 3600.0
DAY_S = 86_400.0
#: the longest SSE event a stream's reader holds while it waits for the event's end; an
#: upstream that never ends one abandons the capture rather than growing the reader
MAX_EVENT_BYTES = 1 << 20


class Redactor:
    """Every rule's matches replaced by ``[REDACTED]``, rules in order."""

    def __init__(self, patterns: list[str]) -> None:
        self.rules = [re.compile(p) for p in patterns]

    def __call__(self, text: str) -> str:
        for rule in self.rules:
            text = rule.sub(REDACTED, text)
        return text


def message_texts(messages: Any) -> list[dict[str, str]]:
    """Role and text of each message (a content list's text parts joined; images dropped)."""
    found: list[dict[str, str]] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, Mapping)]
            content = "\n".join(p for p in parts if isinstance(p, str))
        if isinstance(content, str):
            found.append({"role": str(message.get("role") or "user"), "content": content})
    return found


def response_text(response: Mapping[str, Any]) -> str | None:
    choices = response.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], Mapping) else {}
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    return content if isinstance(content, str) else None


def confidence_of(event: InferenceEvent) -> float | None:
    """The answer's vote share, or a cascade's answering step's confidence."""
    if event.steps and event.cascade_step is not None:
        step = event.steps[event.cascade_step]
        value = step.get("confidence") if isinstance(step, Mapping) else None
        return float(value) if isinstance(value, int | float) else None
    if event.votes and event.answer is not None:
        cast = sum(event.votes.values())
        return event.votes.get(event.answer, 0) / cast if cast else None
    return None


class StreamText:
    """The text a chat stream's first choice adds up to, read from its SSE events as they
    pass (an event may be split across chunks: the unfinished end waits for the next, up to
    MAX_EVENT_BYTES; past that the text is dropped and ``overflowed`` set)."""

    def __init__(self) -> None:
        self._pending = b""
        self._parts: list[str] = []
        self.overflowed = False

    def feed(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        *events, self._pending = (self._pending + chunk).split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: {"):
                    self._add(line[6:])
        if len(self._pending) > MAX_EVENT_BYTES:
            self.overflowed = True
            self._pending, self._parts = b"", []

    def _add(self, data: bytes) -> None:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        for choice in parsed.get("choices") or [] if isinstance(parsed, dict) else []:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, Mapping) else None
            if isinstance(content, str):
                self._parts.append(content)

    def text(self) -> str:
        return "".join(self._parts)


class StreamCapture:
    """One drawn stream: its text collected on the way to the client, kept if it succeeds."""

    def __init__(self, capturer: Capturer, body: Mapping[str, Any]) -> None:
        self.capturer = capturer
        self.body = body
        self.text = StreamText()

    def feed(self, chunk: bytes) -> None:
        self.text.feed(chunk)

    def done(self, event: InferenceEvent) -> None:
        if self.text.overflowed:
            # Partial text is not the response: nothing is stored for this request.
            log.warning(
                "capture of %s abandoned: an SSE event ran past %d bytes",
                event.id,
                MAX_EVENT_BYTES,
            )
        elif event.status == "ok":
            self.capturer.keep(event, self.body, self.text.text())


class Capturer:
    """Decides which requests are captured, redacts them and queues their rows."""

    def __init__(
        self,
        routes: Mapping[str, RouteSpec],
        events: EventLog,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.specs: dict[str, CaptureSpec] = {
            name: spec.capture for name, spec in routes.items() if spec.capture is not None
        }
        self.redactors = {name: Redactor(spec.redact) for name, spec in self.specs.items()}
        self.events = events
        self.rng = rng or random.Random()
        self._purged_at: float | None = None
        self._purging: asyncio.Task[None] | None = None

    def drawn(self, route: str | None) -> bool:
        """Whether a request of ``route`` is captured: its route captures and the sample drew it."""
        spec = self.specs.get(route) if route is not None else None
        if spec is None:
            return False
        return spec.sample_rate >= 1 or self.rng.random() < spec.sample_rate

    def offer(
        self, event: InferenceEvent | None, body: Mapping[str, Any], response: Mapping[str, Any]
    ) -> bool:
        """Capture this request if its route captures and it is drawn; True if captured."""
        if event is None or event.status != "ok" or not self.drawn(event.route):
            return False
        self.keep(event, body, response_text(response))
        return True

    def stream(self, route: str | None, body: Mapping[str, Any]) -> StreamCapture | None:
        """A stream's capture, drawn when it opens: None (nothing to parse) when not drawn."""
        return StreamCapture(self, body) if self.drawn(route) else None

    def keep(self, event: InferenceEvent, body: Mapping[str, Any], text: str | None) -> None:
        """Redact and queue the capture of a drawn request that succeeded."""
        assert event.route is not None
        redact = self.redactors[event.route]
        messages = [
            {"role": m["role"], "content": redact(m["content"])}
            for m in message_texts(body.get("messages"))
        ]
        row = CaptureRow(
            id=event.id,
            ts=time.time(),
            route=event.route,
            variant=event.variant,
            messages=messages,
            response=redact(text) if text is not None else None,
            answer=event.answer,
            confidence=confidence_of(event),
        )
        self.events.record_capture(row)
        self._maybe_purge()

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if self._purged_at is not None and now - self._purged_at < PURGE_EVERY_S:
            return
        if self._purging is not None and not self._purging.done():
            return
        self._purged_at = now
        self._purging = asyncio.get_running_loop().create_task(self.purge(), name="capture-purge")

    async def purge(self) -> None:
        """Delete every capturing route's expired rows (in a worker thread)."""
        try:
            await asyncio.to_thread(purge_expired, self.events.store, self.specs)
        except Exception:  # a failed purge is retried at the next hour; it must not be lost
            log.exception("deleting expired captures failed")


def purge_expired(store: Store, specs: Mapping[str, CaptureSpec], now: float | None = None) -> None:
    now = time.time() if now is None else now
    for route, spec in specs.items():
        store.purge_captures(route, now - spec.retention_days * DAY_S)
