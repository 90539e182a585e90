"""Properties of answer extraction and of mapping a shuffled member's answer back.

- A reply that states its answer in a recognised format, after any reasoning and before any
  afterword, is read as that letter, whatever the letter and the number of options.
- Extraction never raises and never returns a letter that is not an option, on any text and
  any set of options; the span it reports is the letter in the text.
- Long and adversarial replies are read in linear time (the patterns once backtracked
  cubically on runs of spaces, and quadratically on repeated qualifiers).
- Choice shuffles: the shown-to-original mapping is a bijection, and a member's reply relettered
  to the client's letters states the original option.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.pipelines.answers import extract_answer, reletter, rewrite_letter
from gateway.pipelines.ensemble import LETTERS, Shuffle, balanced_shuffles
from gateway.pipelines.parse import parse_question

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------------------------


@st.composite
def option_sets(draw: st.DrawFn) -> dict[str, str]:
    """2 to 10 options lettered from A, with distinct one- or two-word texts."""
    n = draw(st.integers(2, 10))
    words = draw(
        st.lists(
            st.text("bcdfghklmnprstvz", min_size=3, max_size=8), min_size=n, max_size=n, unique=True
        )
    )
    return {LETTERS[i]: word.capitalize() for i, word in enumerate(words)}


# Reasoning and afterwords: any text, unicode and newlines included.
prose = st.text(max_size=120)

EXPLICIT = [
    "Answer: {l}",
    "answer: ({lower})",
    "Answer: ({l})",
    "**Answer:** {l}",
    "**Answer: {l}**",
    "Final answer: [{l}]",
    "Correct answer = {l}",
    "Answer: option {l}",
    "ANSWER :   {l}",
]
STATED = [
    "The answer is ({l}).",
    "the answer is {l} because of the above",
    "The correct answer is option {l}.",
    "The correct option is {l}",
    "So the best answer would be {l}.",
    "The most likely answer is: {l}",
    "The answer is:\n{l}. {text}",
]
BARE = ["{l}", "({l})", "{l}.", "{l}) {text}", "**{l}**", "[{l}]"]


def render(template: str, letter: str, options: dict[str, str]) -> str:
    return template.format(l=letter, lower=letter.lower(), text=options[letter])


# -- reading a stated answer --------------------------------------------------------------------


@PROPERTY
@given(
    options=option_sets(),
    data=st.data(),
    template=st.sampled_from(EXPLICIT + STATED),
    before=prose,
    after=prose,
)
def test_a_stated_answer_is_read_whatever_surrounds_it(
    options: dict[str, str], data: st.DataObject, template: str, before: str, after: str
) -> None:
    letter = data.draw(st.sampled_from(sorted(options)), label="letter")
    # Reasoning and afterword that state no answer of their own.
    assume(extract_answer(before, options) is None and extract_answer(after, options) is None)
    statement = render(template, letter, options)
    text = f"{before}\n\n{statement}\n\n{after}"
    found = extract_answer(text, options)
    assert found is not None and found.letter == letter, (text, found)
    assert text[found.start : found.end].upper() == letter
    # The phrase starts in the statement (or at a qualifier just before it: "final\n\nAnswer").
    qualified = before.rstrip().lower().endswith(("the", "final", "correct", "best", "likely"))
    assert len(before) + 2 <= found.phrase_start <= found.start or qualified


@PROPERTY
@given(options=option_sets(), data=st.data(), template=st.sampled_from(BARE), after=prose)
def test_a_reply_that_starts_with_the_letter_is_read(
    options: dict[str, str], data: st.DataObject, template: str, after: str
) -> None:
    letter = data.draw(st.sampled_from(sorted(options)), label="letter")
    assume(extract_answer(after, options) is None)
    text = f"{render(template, letter, options)}\n{after}"
    # Unless the afterword turns the reply into a repeated option list (two option lines).
    assume(parse_question("stem\n" + text) is None)
    found = extract_answer(text, options)
    assert found is not None and found.letter == letter, (text, found)


@PROPERTY
@given(options=option_sets(), data=st.data(), before=prose)
def test_the_answer_named_by_its_option_text_is_read(
    options: dict[str, str], data: st.DataObject, before: str
) -> None:
    letter = data.draw(st.sampled_from(sorted(options)), label="letter")
    assume(extract_answer(before, options) is None)
    text = f"{before}\nThe answer is {options[letter].lower()}."
    found = extract_answer(text, options)
    assert found is not None and found.letter == letter
    assert found.start == found.end  # no letter to point at


# -- never outside the options, never an exception ----------------------------------------------

letter_sets = st.sets(st.sampled_from(LETTERS), min_size=1).map(sorted)


@PROPERTY
@given(
    text=st.one_of(
        st.text(max_size=400),
        # Text made of the patterns' own pieces, so partial matches are common.
        st.lists(
            st.sampled_from(
                [
                    "answer",
                    "Answer",
                    "is",
                    ":",
                    "=",
                    " ",
                    "\n",
                    "*",
                    "(",
                    ")",
                    "[",
                    "]",
                    "option",
                    "the",
                    "final",
                    "most likely",
                    "A",
                    "b",
                    "C",
                    "J",
                    "K",
                    "z",
                    ".",
                ]
            ),
            max_size=60,
        ).map("".join),
    ),
    letters=letter_sets,
    texts=st.lists(st.text(max_size=12), min_size=10, max_size=10),
)
def test_extraction_never_raises_and_stays_within_the_options(
    text: str, letters: list[str], texts: list[str]
) -> None:
    options = {letter: texts[i] for i, letter in enumerate(letters)}
    found = extract_answer(text, options)
    if found is not None:
        assert found.letter in options
        assert 0 <= found.phrase_start <= found.start <= found.end <= len(text)
        assert text[found.start : found.end].upper() in ("", found.letter)
        rewritten = rewrite_letter(text, found, "Z")
        assert len(rewritten) == len(text)


ADVERSARIAL = {
    "answer, then spaces": "Answer:" + " " * 20_000,
    "answer is, spaces, colon, spaces": "answer is" + " " * 20_000 + ":" + " " * 20_000,
    "answer, spaces, is, spaces": "answer" + " " * 20_000 + "is" + " " * 20_000 + "option",
    "stars and spaces": "**Answer**" + " *" * 20_000 + ":" + "* " * 20_000,
    "repeated qualifiers": "the " + "most likely " * 20_000 + "answer",
    "blank lines": " \n" * 50_000,
    "option lines": "A. x\n" * 50_000,
    "a megabyte of unicode": "é\u2028☃" * 350_000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_long_adversarial_replies_are_read_in_linear_time(text: str) -> None:
    # Before the possessive runs, the first four took hours (cubic in the run's length).
    options = {"A": "Atrophy", "B": "Hyperplasia", "C": "Metaplasia", "D": "Dysplasia"}
    started = time.perf_counter()
    extract_answer(text, options)
    reletter(text, {"A": "B", "B": "A"})
    parse_question(text)
    assert time.perf_counter() - started < 5.0


# -- choice shuffles ------------------------------------------------------------------------------

shuffles = (
    st.integers(2, 10)
    .flatmap(lambda n: st.permutations(range(n)))
    .map(lambda order: Shuffle(tuple(order)))
)


@PROPERTY
@given(st.integers(2, 10), st.integers(1, 12), st.text(max_size=10))
def test_every_member_maps_shown_letters_back_bijectively(n: int, k: int, seed: str) -> None:
    letters = list(LETTERS[:n])
    options = {letter: f"option text {letter}" for letter in letters}
    for shuffle in balanced_shuffles(n, k, seed):
        mapping = shuffle.mapping()
        assert sorted(mapping) == letters and sorted(mapping.values()) == letters
        shown = shuffle.shown(options)
        for shown_letter, text in shown.items():
            original = shuffle.to_original(shown_letter)
            assert mapping[shown_letter] == original and options[original] == text
        assert shuffle.label() == "".join(mapping[letter] for letter in letters)


@PROPERTY
@given(shuffle=shuffles, data=st.data(), template=st.sampled_from(EXPLICIT + STATED), before=prose)
def test_a_members_reply_relettered_states_the_original_option(
    shuffle: Shuffle, data: st.DataObject, template: str, before: str
) -> None:
    """What the runner does: read the member's letter in its shown options, reletter the reply
    to the client's letters, put the original letter at the answer, and read it again."""
    n = len(shuffle.order)
    options = {LETTERS[i]: f"Option{i}text" for i in range(n)}
    shown = shuffle.shown(options)
    picked = data.draw(st.sampled_from(sorted(shown)), label="shown letter")
    assume(extract_answer(before, shown) is None)
    reply = f"{before}\n\n{render(template, picked, shown)}"
    found = extract_answer(reply, shown)
    assert found is not None and found.letter == picked
    original = shuffle.to_original(picked)
    relettered = reletter(reply, shuffle.mapping())
    assert len(relettered) == len(reply)  # so the extraction's span still points at the letter
    final = rewrite_letter(relettered, found, original)
    again = extract_answer(final, options)
    assert again is not None and again.letter == original, (reply, final)
    assert options[original] == shown[picked]


@PROPERTY
@given(shuffle=shuffles, text=st.text(max_size=200))
def test_relettering_is_undone_by_the_inverse_mapping(shuffle: Shuffle, text: str) -> None:
    mapping = shuffle.mapping()
    inverse = {original: shown for shown, original in mapping.items()}
    relettered = reletter(text, mapping)
    assert len(relettered) == len(text)
    assert reletter(relettered, inverse) == text
