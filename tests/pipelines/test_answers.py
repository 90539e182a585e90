"""Reading the answer letter from replies: many phrasings, and the ways it must fail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipelines.answers import extract_answer, reletter, rewrite_letter

OPTIONS = {"A": "Atrophy", "B": "Hyperplasia", "C": "Metaplasia", "D": "Dysplasia"}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Answer: C", "C"),
        ("answer: c", None),  # a bare lower-case letter is not an option letter
        ("answer: (c)", "C"),
        ("Reasoning here.\n\nAnswer: B", "B"),
        ("**Answer:** (D)", "D"),
        ("**Answer: D**", "D"),
        ("Final answer: [A]", "A"),
        ("The answer is (C).", "C"),
        ("the answer is C because metaplasia is reversible", "C"),
        ("The correct answer is option B.", "B"),
        ("The correct option is D", "D"),
        ("So the best answer would be A.", "A"),
        ("The answer is:\nC. Metaplasia", "C"),
        ("C", "C"),
        ("(B)", "B"),
        ("D.", "D"),
        ("A) Atrophy", "A"),
        ("**C**", "C"),
        ("The answer is Metaplasia.", "C"),
        ("Answer: Dysplasia", "D"),
        # The last explicit answer wins over letters mentioned on the way.
        ("Answer: A is tempting, but it is wrong.\nAnswer: D", "D"),
        ("Option A is wrong. Option B is wrong. The answer is C.", "C"),
        # An explicit answer beats an earlier stated one.
        ("The answer is A? Let me check again.\nAnswer: B", "B"),
    ],
)
def test_phrasings(text: str, letter: str | None) -> None:
    found = extract_answer(text, OPTIONS)
    assert (found.letter if found else None) == letter


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I don't know.",
        "Answer: E",  # not an option
        "Answer: Anatomy is the study of structure",  # 'A' glued to a word is not a letter
        "The answer is a difficult one.",  # an article, not a letter
        # The model repeating the option list has not chosen "A".
        "A. Atrophy\nB. Hyperplasia\nC. Metaplasia\nD. Dysplasia",
        "The answer is hyper-something.",
        "Answer:",
    ],
)
def test_failures_give_none(text: str) -> None:
    assert extract_answer(text, OPTIONS) is None


def test_option_text_must_name_exactly_one_option() -> None:
    options = {"A": "Cell", "B": "Cell wall", "C": "Nucleus"}
    # "Cell wall" starts with both "Cell" and "Cell wall": ambiguous, so no answer.
    assert extract_answer("The answer is cell wall.", options) is None
    found = extract_answer("The answer is nucleus.", options)
    assert found is not None and found.letter == "C"


def test_span_points_at_the_letter_and_phrase_start_at_the_phrase() -> None:
    text = "Because of X.\nAnswer: (C)"
    found = extract_answer(text, OPTIONS)
    assert found is not None
    assert text[found.start : found.end] == "C"
    assert text[found.phrase_start :].startswith("Answer")
    assert rewrite_letter(text, found, "A") == "Because of X.\nAnswer: (A)"


_letters = st.sampled_from("ABCD")
_filler = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Zs")), max_size=60)


@given(
    letter=_letters,
    before=_filler,
    template=st.sampled_from(
        [
            "Answer: {l}",
            "Answer: ({l})",
            "**Answer:** {l}",
            "The answer is {l}.",
            "The correct answer is ({l})",
            "Final answer: {l}",
        ]
    ),
)
def test_any_reasoning_then_a_stated_letter(letter: str, before: str, template: str) -> None:
    text = f"{before}\n\n{template.format(l=letter)}"
    found = extract_answer(text, OPTIONS)
    assert found is not None and found.letter == letter


@given(st.text(max_size=200))
def test_never_crashes_and_only_returns_option_letters(text: str) -> None:
    found = extract_answer(text, OPTIONS)
    assert found is None or found.letter in OPTIONS


@given(st.permutations("ABCD"))
def test_reletter_renames_named_letters_once(perm: list[str]) -> None:
    mapping = dict(zip("ABCD", perm, strict=True))
    text = "(A) is wrong; option B fits, choice C not.\nD. is last\nA B cell stays."
    out = reletter(text, mapping)
    assert out.startswith(f"({mapping['A']}) is wrong; option {mapping['B']} fits")
    assert f"choice {mapping['C']} not." in out
    assert f"\n{mapping['D']}. is last" in out
    # A bare letter inside prose is not an option reference.
    assert out.endswith("A B cell stays.")
    assert len(out) == len(text)
