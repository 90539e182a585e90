"""Training data for adapters: OpenAI's fine-tuning chat format, or labelled multiple choice.

The chat format is one JSON object per line, as OpenAI's fine-tuning takes it::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}]}

Loss is taken on assistant messages only; ``weight: 0`` excludes one of them. A file in the
labelled multiple-choice format of ``datasets.py`` is accepted too: only its train split is
used (held-out items are dropped, so no adapter ever sees them), each item becomes one
conversation by ``mc_to_chat``. Every problem is reported with its file and line.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.datasets import MCItem, read_items, split_of
from gateway.errors import DataError, TrainingDataError
from gateway.learned import mc_content_id, prompt_content_id

ROLES = frozenset({"system", "user", "assistant"})
DataFormat = Literal["chat", "mc"]
MC_INSTRUCTION = "Answer with the letter of the correct option."
IGNORE = -100  # the label transformers leaves out of the loss


@dataclass(frozen=True)
class Conversation:
    messages: tuple[tuple[str, str], ...]
    #: per message: whether its tokens are trained on (assistant messages not weighted 0)
    trained: tuple[bool, ...]
    #: where it came from, for error messages ("data.jsonl:12")
    where: str
    #: the multiple-choice question it was made from, if any (``learned.mc_content_id``)
    mc_id: str | None = None

    @property
    def content_ids(self) -> list[str]:
        """What the adapter learns to answer: each trained turn's prompt, and the question."""
        ids = [
            prompt_content_id(self.messages[:index])
            for index, trained in enumerate(self.trained)
            if trained
        ]
        return [*ids, self.mc_id] if self.mc_id is not None else ids


@dataclass(frozen=True)
class TrainingData:
    conversations: list[Conversation]
    format: DataFormat
    sha256: str
    #: held-out items of a multiple-choice file that were left out
    dropped_heldout: int = 0


def mc_prompt(question: str, options: dict[str, str]) -> str:
    """The user message for a multiple-choice question (options one per line, "A. ...")."""
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"{question}\n\n{lines}\n\n{MC_INSTRUCTION}"


def mc_to_chat(item: MCItem, where: str) -> Conversation:
    return Conversation(
        messages=(("user", mc_prompt(item.question, item.options)), ("assistant", mc_answer(item))),
        trained=(False, True),
        where=where,
        mc_id=mc_content_id(item.question, item.options),
    )


def mc_answer(item: MCItem) -> str:
    return f"Answer: {item.answer}"


def read_training_data(path: Path) -> TrainingData:
    """Read a chat-format or multiple-choice JSONL file, checking every line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"{path}: cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise TrainingDataError(f"{path}: no examples (the file is empty)")
    if _looks_like_mc(first):
        return _read_mc(path, digest)
    conversations = [
        parse_conversation(line, f"{path}:{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    return TrainingData(conversations, "chat", digest)


def _looks_like_mc(line: str) -> bool:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "messages" not in data and "question" in data


def _read_mc(path: Path, digest: str) -> TrainingData:
    try:
        every = read_items(path)
    except DataError as exc:
        raise TrainingDataError(str(exc)) from None
    lines = _item_lines(path)
    train = [item for item in every if split_of(item.id) == "train"]
    if not train:
        raise TrainingDataError(
            f"{path}: all {len(every)} items are in the held-out split; adapters never train on "
            "them. Fix: import the train split (`gateway data import ... --split train`)."
        )
    conversations = [mc_to_chat(item, f"{path}:{lines[item.id]}") for item in train]
    return TrainingData(conversations, "mc", digest, dropped_heldout=len(every) - len(train))


def _item_lines(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if line.strip():
            found.setdefault(str(json.loads(line)["id"]), number)
    return found


def parse_conversation(line: str, where: str) -> Conversation:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainingDataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "messages" not in data:
        raise TrainingDataError(f'{where}: expected an object with "messages"')
    unsupported = set(data) - {"messages"}
    if unsupported:
        raise TrainingDataError(
            f"{where}: unsupported keys {', '.join(sorted(unsupported))} (only 'messages' is "
            "trained on; tools and function calls are not supported)"
        )
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"{where}: 'messages' must be a non-empty list")
    parsed: list[tuple[str, str]] = []
    trained: list[bool] = []
    for index, message in enumerate(messages):
        role, content, weight = _message(message, f"{where}: messages[{index}]")
        parsed.append((role, content))
        trained.append(role == "assistant" and weight != 0)
    if not any(trained):
        raise TrainingDataError(
            f"{where}: no assistant message to learn from (add one, or drop weight: 0)"
        )
    return Conversation(tuple(parsed), tuple(trained), where)


def _message(message: Any, where: str) -> tuple[str, str, int]:
    if not isinstance(message, dict):
        raise TrainingDataError(f"{where}: expected an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise TrainingDataError(
            f"{where}: role is {json.dumps(role)}; use one of {', '.join(sorted(ROLES))}"
        )
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise TrainingDataError(f"{where}: 'content' must be a non-empty string")
    weight = message.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise TrainingDataError(f"{where}: 'weight' must be 0 or 1")
    if "weight" in message and role != "assistant":
        raise TrainingDataError(f"{where}: 'weight' is only allowed on assistant messages")
    unknown = set(message) - {"role", "content", "weight", "name"}
    if unknown:
        raise TrainingDataError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return str(role), content, int(weight)


# -- tokens --------------------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    where: str


def encode(conversation: Conversation, tokenizer: Any, max_length: int) -> Encoded:
    """Tokens of a conversation through the base's chat template; labels on trained turns only.

    Each trained assistant message's span is found by rendering the conversation up to it (with
    the generation prompt) and up to its end: the characters in between are its content and
    end-of-turn marker, so the model also learns where to stop.
    """
    messages = [{"role": r, "content": c} for r, c in conversation.messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, trained in enumerate(conversation.trained):
        if not trained:
            continue
        before = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise TrainingDataError(
                f"{conversation.where}: the base model's chat template does not render turns "
                "as prefixes of each other, so assistant tokens cannot be told apart"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])[:max_length]
    offsets = list(encoded["offset_mapping"])[:max_length]
    labels = [
        token if any(lo <= start < hi for lo, hi in spans) else IGNORE
        for token, (start, _) in zip(ids, offsets, strict=True)
    ]
    if all(label == IGNORE for label in labels):
        raise TrainingDataError(
            f"{conversation.where}: no assistant tokens within --max-length {max_length} "
            f"(the example has {len(encoded['input_ids'])} tokens). Fix: shorten it or raise "
            "--max-length."
        )
    return Encoded(ids, labels, conversation.where)


def split_validation(
    items: Sequence[Encoded], fraction: float, seed: int
) -> tuple[list[Encoded], list[Encoded]]:
    """A seeded validation split; at least one validation example when a fraction is asked."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    count = round(len(items) * fraction)
    if fraction > 0 and len(items) >= 2:
        count = max(1, count)
    count = min(count, len(items) - 1)
    val = {i for i in order[:count]}
    return [x for i, x in enumerate(items) if i not in val], [items[i] for i in sorted(val)]


def micro_batches(rows: Sequence[Encoded], token_budget: int) -> list[list[Encoded]]:
    """Split one step's examples into groups whose padded size stays within ``token_budget``.

    Memory grows with padded tokens (activations for the backward pass, 49k-wide logits), so
    a step of long examples is run in several passes whose gradients add up; an example longer
    than the budget runs alone.
    """
    groups: list[list[Encoded]] = []
    for row in sorted(rows, key=lambda r: len(r.input_ids), reverse=True):
        group = groups[-1] if groups else None
        # Sorted longest first, so the group's width is its first row's length.
        if group and (len(group) + 1) * len(group[0].input_ids) <= token_budget:
            group.append(row)
        else:
            groups.append([row])
    return groups
