"""Structured logs: one JSON line per inference with its fields, and never the prompt."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.telemetry.logs import (
    REQUEST_LOGGER,
    JsonFormatter,
    configure_logging,
    log_format,
)
from tests.observability.support import PROMPT_MARK, adapter_folder, chat, config, fake_engines
from tests.support.apps import AppFactory

FIELDS = {"inference_id", "request_id", "route", "variant", "target", "status", "latency_ms"}


@pytest.fixture
def lines() -> Any:
    """The gateway.requests logger's records as JSON lines, in a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(REQUEST_LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


async def test_one_json_line_per_inference_with_its_fields_and_no_prompt(
    gateway: AppFactory, tmp_path: Path, lines: io.StringIO
) -> None:
    async with gateway(fake_engines(), config(adapter_folder(tmp_path), "http://x")) as (_, raw):
        ok = await chat(raw, "qa", user="alice@example.com")
        failed = await chat(raw, "broken")
        refused = await chat(raw, "made-up-model")
    text = lines.getvalue()
    assert PROMPT_MARK not in text and "alice" not in text and "made-up-model" not in text
    rows = [orjson.loads(line) for line in text.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) >= FIELDS and row["logger"] == REQUEST_LOGGER and row["level"] == "info"
    first, second, third = rows
    assert first["inference_id"] == ok.headers["x-switchboard-inference-id"]
    assert (first["route"], first["variant"], first["target"]) == ("qa", "first", "m1")
    assert first["status"] == "ok" and first["latency_ms"] > 0 and first["prompt_tokens"] == 3
    assert second["inference_id"] == failed.headers["x-switchboard-inference-id"]
    assert (second["status"], second["error_code"], second["http_status"]) == (
        "error",
        "upstream_error",
        502,
    )
    assert third["inference_id"] == refused.headers["x-switchboard-inference-id"]
    assert third["target"] is None and third["error_code"] == "model_not_found"
    assert "error_message" not in third and "key_hash" not in third


def test_the_format_is_switchable_and_checked() -> None:
    assert log_format({}) == "text"
    assert log_format({"GATEWAY_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="GATEWAY_LOG_FORMAT"):
        log_format({"GATEWAY_LOG_FORMAT": "xml"})


def test_json_mode_formats_every_record_and_text_mode_is_as_before() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger(REQUEST_LOGGER).level)
    try:
        assert configure_logging("info", "json") is None  # uvicorn then logs through the root
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        record = logging.LogRecord("gateway.x", logging.WARNING, "f", 1, "odd %s", ("one",), None)
        line = orjson.loads(handler.format(record))
        assert (line["level"], line["logger"]) == ("warning", "gateway.x")
        assert line["message"] == "odd one"
        root.handlers[:] = []
        assert configure_logging("info", "text") is not None  # uvicorn's own config, as before
        assert not logging.getLogger(REQUEST_LOGGER).isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger(REQUEST_LOGGER).setLevel(saved[2])
