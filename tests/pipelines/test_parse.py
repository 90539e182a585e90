"""The parse step: lettered options in the last user message, or the structured extension."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipelines.parse import parse_question, question_of
from gateway.protocol import ChatCompletionRequest


@pytest.mark.parametrize(
    "block",
    [
        "A. red\nB. green\nC. blue",
        "A) red\nB) green\nC) blue",
        "(A) red\n(B) green\n(C) blue",
        "A: red\nB: green\nC: blue",
        "[A] red\n[B] green\n[C] blue",
        "  A. red\n\n  B. green\n\n  C. blue",
    ],
)
def test_option_formats(block: str) -> None:
    found = parse_question(f"Which colour is the sky?\n\n{block}\n\nAnswer with the letter.")
    assert found is not None
    assert found.question == "Which colour is the sky?"
    assert found.options == {"A": "red", "B": "green", "C": "blue"}


@pytest.mark.parametrize(
    "text",
    [
        "Name three colours.",
        "A. only one option\n",
        "Question?\nB. starts at B\nC. then C",
        "Question?\nA. one\nC. skips B",
        "A. red\nB. green",  # no question before the options
    ],
)
def test_free_form_texts_have_no_question(text: str) -> None:
    assert parse_question(text) is None


def test_the_last_block_wins_and_stops_at_a_non_option_line() -> None:
    text = "Earlier list:\nA. x\nB. y\n\nThe question?\nA. one\nB. two\nThen more text.\nC. stray"
    found = parse_question(text)
    assert found is not None
    assert found.options == {"A": "one", "B": "two"}
    assert found.question.endswith("The question?")


def _chat(**extra: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "What? A. x B. y"}], **extra}
    return ChatCompletionRequest.model_validate(body)


def test_structured_extension_wins_over_the_message() -> None:
    chat = _chat(switchboard={"question": "Q?", "options": {"A": "x", "B": "y", "C": "z"}})
    found = question_of(chat)
    assert found is not None and found.question == "Q?" and found.letters == ["A", "B", "C"]


def test_content_parts_are_read() -> None:
    parts = [{"type": "text", "text": "Why?"}, {"type": "text", "text": "A. a\nB. b"}]
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": parts}]}
    )
    found = question_of(chat)
    assert found is not None and found.options == {"A": "a", "B": "b"}
