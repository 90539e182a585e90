"""The parse step: the question and its lettered options, from the request.

Either the client sends them structured (``"switchboard": {"question": ..., "options": {...}}``)
or they are found in the last user message: one option per line, lettered from A in order, as
"A. ...", "A) ...", "(A) ...", "A: ..." or "[A] ...". A message without such a block is free-form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.protocol import ChatCompletionRequest, ChatMessage

LETTERS = "ABCDEFGHIJ"
_OPTION_LINE = re.compile(
    r"^\s*(?:\((?P<p>[A-J])\)|\[(?P<b>[A-J])\]|(?P<l>[A-J])[.):])\s+(?P<text>\S.*)$"
)


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question: the stem and its options in the client's lettering."""

    question: str
    options: dict[str, str]

    @property
    def letters(self) -> list[str]:
        return list(self.options)


def question_of(chat: ChatCompletionRequest) -> MCQuestion | None:
    """The request's multiple-choice question, or None for a free-form request."""
    extension = chat.switchboard
    if extension is not None and extension.options is not None:
        question = extension.question or last_user_text(chat.messages) or ""
        return MCQuestion(question.strip(), dict(extension.options))
    text = last_user_text(chat.messages)
    return parse_question(text) if text else None


def last_user_text(messages: list[ChatMessage]) -> str | None:
    for message in reversed(messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            if content is None:
                return None
            return "\n".join(
                str(getattr(part, "text", "")) for part in content if part.type == "text"
            )
    return None


def parse_question(text: str) -> MCQuestion | None:
    """Find the last block of options lettered A, B, ... (one per line) and the stem before it.

    Blank lines may separate options; any other line ends the block. Lines after the block
    (e.g. "Answer with the letter.") are not part of the question.
    """
    lines = text.splitlines()
    best: tuple[int, dict[str, str]] | None = None
    index = 0
    while index < len(lines):
        match = _OPTION_LINE.match(lines[index])
        if match is None or _letter(match) != "A":
            index += 1
            continue
        options: dict[str, str] = {}
        start, cursor = index, index
        while cursor < len(lines):
            line = lines[cursor]
            if not line.strip():
                cursor += 1
                continue
            found = _OPTION_LINE.match(line)
            if found is None or _letter(found) != LETTERS[len(options)]:
                break
            options[_letter(found)] = found.group("text").strip()
            cursor += 1
            if len(options) == len(LETTERS):
                break
        if len(options) >= 2:
            best = (start, options)
        index = max(cursor, index + 1)
    if best is None:
        return None
    start, options = best
    stem = "\n".join(lines[:start]).strip()
    if not stem:
        return None
    return MCQuestion(stem, options)


def _letter(match: re.Match[str]) -> str:
    return str(match.group("p") or match.group("b") or match.group("l"))
