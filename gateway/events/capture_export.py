"""Captured inferences as training data: filtered, in OpenAI's fine-tuning chat format, with a
lineage file naming every inference it came from (``gateway datasets export``, and
``gateway adapters distill --from-capture``)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.errors import DataError
from gateway.events.sql import Store


@dataclass(frozen=True)
class CaptureFilter:
    route: str
    variant: str | None = None
    #: feedback metric name and the value it must have (``correct=1``, ``rating=5``, text)
    where: tuple[str, str] | None = None
    min_confidence: float | None = None
    since: float | None = None

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["where"] = f"{self.where[0]}={self.where[1]}" if self.where else None
        return data


def parse_where(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise DataError(f"--where '{text}': write FEEDBACK=VALUE, e.g. correct=1")
    return name.strip(), value.strip()


def parse_since(text: str) -> float:
    """A Unix time, an ISO date or time, or an age like ``7d``, ``12h``, ``30m``."""
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"--since '{text}': use an ISO date, a Unix time or an age (7d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _matches(feedback: Mapping[str, Any], wanted: str) -> bool:
    lowered = wanted.lower()
    value = feedback.get("value")
    if value is not None:
        if lowered in ("true", "false"):
            return float(value) == float(lowered == "true")
        try:
            return float(value) == float(wanted)
        except ValueError:
            return False
    return feedback.get("text") == wanted


def select_captures(store: Store, spec: CaptureFilter) -> list[dict[str, Any]]:
    """The captures that pass the filter: answered (status ok), oldest first."""
    rows = [
        r
        for r in store.captures(spec.route, spec.since or 0.0)
        if r.get("status") == "ok" and r.get("response")
    ]
    if spec.variant is not None:
        rows = [r for r in rows if r.get("variant") == spec.variant]
    if spec.min_confidence is not None:
        rows = [
            r
            for r in rows
            if r.get("confidence") is not None and r["confidence"] >= spec.min_confidence
        ]
    if spec.where is not None:
        name, wanted = spec.where
        feedback = store.feedback_for([r["id"] for r in rows]) if rows else []
        passing = {f["inference_id"] for f in feedback if f["name"] == name and _matches(f, wanted)}
        rows = [r for r in rows if r["id"] in passing]
    return rows


def chat_example(row: Mapping[str, Any], reply: str | None = None) -> dict[str, Any]:
    """One fine-tuning line: the captured messages, then the reply (default: the response)."""
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in row["messages"]
        if m.get("role") in ("system", "user", "assistant")
    ]
    return {"messages": [*messages, {"role": "assistant", "content": reply or row["response"]}]}


def lineage_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".lineage.json")


def write_dataset(
    out: Path, examples: Sequence[dict[str, Any]], ids: Sequence[str], lineage: dict[str, Any]
) -> Path:
    """The JSONL and its ``.lineage.json`` (ids, filter, hash), each written atomically."""
    if not examples:
        raise DataError("no captured inference passes the filter; nothing written")
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
    record = {
        **lineage,
        "file": str(out),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "rows": len(examples),
        "inference_ids": list(ids),
        "created": time.time(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    side = lineage_path(out)
    for path, content in ((out, text), (side, json.dumps(record, indent=2) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(path)
    return side
