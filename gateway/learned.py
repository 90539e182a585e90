"""What an adapter or an exemplar bank learned from: the content ids of its items, on disk.

An evaluation must leave out the items a variant was trained or prompted on, and only those:
a user's own labelled file was never seen by any adapter, so it is evaluated whole. Ids in data
files are the user's to choose, so items are matched by content instead: a content id is a hash
of what the model was shown, with whitespace and case folded (a copy with other spacing is the
same item) and, for multiple choice, the options as a set (relettering or shuffling them does
not make a new question).

Written at training and bank-building time as ``learned_from.json`` beside the adapter's
manifest, and ``<bank>.learned.json`` beside an exemplar bank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.errors import DataError

ADAPTER_FILE = "learned_from.json"
FORMAT = 1
Kind = Literal["adapter", "bank"]


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _digest(kind: str, parts: Iterable[str]) -> str:
    payload = json.dumps([kind, *parts], ensure_ascii=False, separators=(",", ":"))
    return f"{kind}:{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:24]}"


def mc_content_id(question: str, options: Mapping[str, str]) -> str:
    """A multiple-choice question: its text and its options' texts as a set."""
    return _digest("mc", [_fold(question), *sorted(_fold(t) for t in options.values())])


def prompt_content_id(messages: Sequence[tuple[str, str]]) -> str:
    """A chat prompt: its (role, content) turns in order, the answer to learn left out."""
    return _digest("chat", [f"{role}\n{_fold(content)}" for role, content in messages])


@dataclass(frozen=True)
class Learned:
    """The content ids one adapter or bank learned from."""

    kind: Kind
    name: str
    ids: frozenset[str]
    #: the data file it came from, as given (for the report)
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "items": len(self.ids),
            "ids": sorted(self.ids),
        }


def write_learned(path: Path, learned: Learned) -> None:
    """Atomically, so a reader never sees half a list."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(learned.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_learned(path: Path) -> Learned | None:
    """The record at ``path``; None where there is none (made before records were written)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); rebuild it or delete it") from None
    kinds = ("adapter", "bank")
    ok = isinstance(data, dict) and data.get("format") == FORMAT and data.get("kind") in kinds
    ids = data.get("ids") if isinstance(data, dict) else None
    if not ok or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: not a record of learned items (format {FORMAT})")
    return Learned(data["kind"], str(data.get("name", "")), frozenset(ids), data.get("source"))


def bank_record_path(jsonl: Path) -> Path:
    return jsonl.with_name(jsonl.stem + ".learned.json")
