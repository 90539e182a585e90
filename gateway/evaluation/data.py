"""Evaluation data: labelled items, an optional header line naming the scorer, the split.

A data file is JSONL. Its first line may be a header, an object with ``scorer`` and no
``id``: ``{"scorer": "numeric", "tolerance": 0.5}`` (see scoring.py). Every other line is
an item, either

- multiple choice, the labelled format of datasets.py:
  ``{"id", "question", "options": {"A": ..., "B": ...}, "answer": "C"}``; or
- free form: ``{"id", "prompt": "..."}`` or ``{"id", "messages": [...]}``, with ``"expected"``
  (any JSON value the scorer compares with).

A score on data a variant has seen measures nothing, so by default an evaluation leaves out
(``split="heldout"``) the items of the packaged data sets on the train side of their fixed split
(``datasets.py``: the packaged adapters and banks learn from it), and, once the variants are
known, exactly the items an evaluated variant was trained or prompted on (``learned.py``,
matched by content; run.py). A user's own file that nothing was trained on is evaluated whole.
Every problem names the file and the line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.adapters.training_data import mc_prompt
from gateway.datasets import Split, content_id, parse_item, split_of
from gateway.errors import DataError, ScorerError
from gateway.evaluation.scoring import ScorerSpec, check_expected, from_header
from gateway.learned import mc_content_id, prompt_content_id

SplitChoice = Literal["heldout", "all"]
#: the data sets ``gateway data import`` makes, whose ids are content ids with a fixed split
PACKAGED_SOURCES = frozenset({"mmlu", "medmcqa"})
_ROLES = frozenset({"system", "developer", "user", "assistant"})


@dataclass(frozen=True)
class EvalItem:
    id: str
    #: the line of the data file the item came from (1-based)
    line: int
    #: the gold: a letter for multiple-choice items, any JSON value for free-form ones
    expected: Any
    question: str | None = None
    options: dict[str, str] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: an item of a packaged data set (its id is the set's content id): its fixed split
    packaged_split: Split | None = None

    @property
    def is_mc(self) -> bool:
        return self.options is not None

    @property
    def content_ids(self) -> frozenset[str]:
        """What a variant that learned from this item recorded (gateway/learned.py)."""
        if self.options is not None and self.question is not None:
            prompt = mc_prompt(self.question, self.options)
            return frozenset(
                {mc_content_id(self.question, self.options), prompt_content_id([("user", prompt)])}
            )
        turns = [(str(m["role"]), str(m["content"])) for m in self.messages]
        return frozenset({prompt_content_id(turns)})

    def request(self, route: str) -> dict[str, Any]:
        """The chat request for this item, as a client would send it to the route.

        A multiple-choice item is the question with its lettered options as the user message
        (the format adapters are trained on), plus the structured ``switchboard`` extension so
        that pipelines which write their own prompt need not parse it back out.
        """
        if self.options is not None and self.question is not None:
            return {
                "model": route,
                "messages": [{"role": "user", "content": mc_prompt(self.question, self.options)}],
                "switchboard": {"question": self.question, "options": dict(self.options)},
            }
        return {"model": route, "messages": [dict(m) for m in self.messages]}


@dataclass(frozen=True)
class EvalData:
    path: Path
    items: list[EvalItem]
    sha256: str
    #: the scorer the header names, if it has one
    header: ScorerSpec | None
    #: packaged items left out because they are on the train side of the fixed split
    skipped_train: int = 0


def read_eval_data(
    path: Path, *, split: SplitChoice = "heldout", scorer: ScorerSpec | None = None
) -> tuple[EvalData, ScorerSpec]:
    """Read and check a data file; return it with the scorer to use.

    ``scorer`` (from the command line) wins over the header; with neither, multiple-choice data
    is scored with ``mc`` and free-form data with ``exact``.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    header: ScorerSpec | None = None
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    skipped = 0
    first = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        data = _object(line, where)
        if first and "scorer" in data and "id" not in data:
            first = False
            header = _header(data, where)
            continue
        first = False
        item = _item(data, line, number, where)
        if item.id in seen:
            raise DataError(f"{where}: duplicate id '{item.id}' (first on line {seen[item.id]})")
        seen[item.id] = number
        if split == "heldout" and item.packaged_split == "train":
            skipped += 1
            continue
        items.append(item)
    if not seen:
        raise DataError(f"{path}: no items (the file is empty or holds only a header)")
    if not items:
        raise DataError(
            f"{path}: all {skipped} items are packaged items on the train side of the fixed "
            "split, which the packaged adapters and exemplar banks learn from. Fix: import the "
            "held-out split (`gateway data import ... --split heldout`), or pass --split all to "
            "evaluate on them anyway"
        )
    spec = scorer or header or ScorerSpec("mc" if items[0].is_mc else "exact")
    for item in items:
        _check_item(spec, item, f"{path}:{item.line}")
    sha = hashlib.sha256(raw).hexdigest()
    return EvalData(path, items, sha, header, skipped), spec


def _object(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object")
    return data


def _header(data: dict[str, Any], where: str) -> ScorerSpec:
    try:
        return from_header(data, where)
    except ScorerError as exc:
        raise DataError(str(exc)) from None


def _item(data: dict[str, Any], line: str, number: int, where: str) -> EvalItem:
    if "options" in data:
        mc = parse_item(line, where)
        packaged = mc.source in PACKAGED_SOURCES and mc.id == content_id(
            mc.source, mc.question, mc.options
        )
        split = split_of(mc.id) if packaged else None
        return EvalItem(mc.id, number, mc.answer, mc.question, dict(mc.options), [], split)
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if "expected" not in data or data["expected"] is None:
        raise DataError(
            f"{where}: missing 'expected' (free-form items need it; multiple-choice items "
            "have 'options' and 'answer')"
        )
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        raise DataError(f"{where}: give exactly one of 'prompt' or 'messages'")
    if has_prompt:
        prompt = data["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _messages(data["messages"], where)
    return EvalItem(item_id, number, data["expected"], messages=messages)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise DataError(
                f"{where}: messages[{index}] needs a 'role' ({', '.join(sorted(_ROLES))})"
            )
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{index}].content must be a string")
    return [dict(m) for m in value]


def _check_item(spec: ScorerSpec, item: EvalItem, where: str) -> None:
    if spec.kind == "mc" and not item.is_mc:
        raise DataError(
            f"{where}: the mc scorer needs a multiple-choice item ('question', 'options', "
            "'answer'); for free-form items choose another scorer"
        )
    try:
        check_expected(spec, item.expected, where)
    except ScorerError as exc:
        raise DataError(str(exc)) from None
