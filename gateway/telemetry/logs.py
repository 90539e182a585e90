"""Structured logs: JSON lines or today's text (``GATEWAY_LOG_FORMAT=json|text``).

In JSON every record is one object per line (``ts``, ``level``, ``logger``, ``message`` and a
record's ``fields``), uvicorn's included, and every inference event adds one line on the
``gateway.requests`` logger: its ids, route, variant, target, status and timings. That line
holds no prompt or answer text, no error message (an upstream's may quote the prompt), no key
and no key hash, and no model name a client made up (a refusal has no target). In text mode the
request lines are off, so the text logs stay as they were.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson
from opentelemetry import trace

from gateway.events.schema import InferenceEvent

LOG_FORMAT_ENV = "GATEWAY_LOG_FORMAT"
FORMATS = ("text", "json")
REQUEST_LOGGER = "gateway.requests"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_format(env: Mapping[str, str] = os.environ) -> str:
    """The format ``GATEWAY_LOG_FORMAT`` asks for; a value that is neither fails fast."""
    value = env.get(LOG_FORMAT_ENV, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={value!r}: use 'json' or 'text'")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` (``extra={"fields": ...}``) are merged."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _iso(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def configure_logging(level: str, fmt: str | None = None) -> dict[str, Any] | None:
    """Set up the process's logging; returns the ``log_config`` to hand to uvicorn.

    Text: today's ``basicConfig`` and uvicorn's own config. JSON: one handler on the root
    logger and ``None`` for uvicorn, so its records reach the root and come out as JSON too.
    """
    fmt = fmt or log_format()
    if fmt == "text":
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
        # The per-inference lines are JSON's; text logs stay as they were.
        logging.getLogger(REQUEST_LOGGER).setLevel(logging.WARNING)
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return None


class RequestLog:
    """Writes one ``gateway.requests`` line per inference event, when that logger is on."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(REQUEST_LOGGER)

    @property
    def enabled(self) -> bool:
        # Logging caches this per level: a dict lookup on the hot path.
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, event: InferenceEvent, target: str) -> None:
        fields = request_fields(event, target)
        name = event.route or target or "-"
        self.logger.info(
            "%s %s %s", event.status, name, _ms(event.latency_ms), extra={"fields": fields}
        )


def request_fields(event: InferenceEvent, target: str) -> dict[str, Any]:
    """The structured fields of one inference's line (docs/operations.md lists them)."""
    fields: dict[str, Any] = {
        "inference_id": event.id,
        "request_id": event.request_id,
        "route": event.route,
        "variant": event.variant,
        "target": target or None,
        "pipeline": event.pipeline,
        "assignment": event.assignment,
        "attempt": event.attempt,
        "shadow": event.shadow,
        "stream": event.stream,
        "status": event.status,
        "http_status": event.http_status,
        "error_code": event.error_code,
        "latency_ms": _round(event.latency_ms),
        "ttft_ms": _round(event.ttft_ms),
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cost": event.cost,
    }
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")
    return fields


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _ms(value: float | None) -> str:
    return f"{value:.1f}ms" if value is not None else "-"
