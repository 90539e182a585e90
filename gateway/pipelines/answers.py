"""Reading the final answer letter out of a model's reply, and relettering a reply.

Small models phrase their final answer in many ways ("Answer: C", "**Answer:** (C)", "the
correct answer is option C", a bare "C.", or the option's text). The patterns are tried from
the most to the least explicit, and within one pattern the last occurrence wins, because a
chain of thought mentions letters on its way ("A is wrong because ...") before it concludes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Extraction:
    """A letter read from a reply, where it stands and where its answer phrase starts."""

    letter: str
    #: the span of the letter itself in the text (used to reletter the reply)
    start: int
    end: int
    #: where the phrase that states the answer begins ("Answer: C" starts at "Answer")
    phrase_start: int


# A letter must not be glued to a following letter or digit: "Answer: Atrophy" is not "A".
#
# Runs of spaces and stars are matched possessively (``*+``, ``++``): where several of them meet
# ("answer:", spaces, stars, spaces, then the letter), a backtracking match would try every way
# to split a long run between them, and a reply of "Answer:" and a few thousand spaces took
# seconds (cubic time) on the event loop. The tokens after each run can never match a space or
# a star, so giving some back could never help: possessive runs match exactly the same texts.
_LETTER = r"\**+\s*+(?:\((?P<p>[A-Za-z])\)|\[(?P<b>[A-Za-z])\]|(?P<l>[A-Z]))\**(?![A-Za-z0-9])"

_EXPLICIT = re.compile(
    r"(?P<phrase>\b(?:final\s+|correct\s+|best\s+)?answer\s*+(?:is\s*+)?\**+\s*+[:=]\s*+\**+\s*+"
    r"(?:option\s++|choice\s++)?)" + _LETTER,
    re.IGNORECASE,
)
_STATED = re.compile(
    # At most four qualifiers: unbounded, every word of "most likely most likely ..." would
    # start a scan to the end of the run (quadratic time).
    r"(?P<phrase>\b(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+|most\s+likely\s+){0,4}"
    r"(?:answer|option|choice)\s++(?:is|would\s+be|should\s+be|must\s+be|=)\s*+:?\s*+"
    r"(?:option\s++|choice\s++|letter\s++)?)" + _LETTER,
    re.IGNORECASE,
)
# A reply that is only a letter, or starts with one: "C", "(C)", "C.", "C) Atrophy", "**C**".
_BARE = re.compile(r"^\s*+(?P<phrase>)" + _LETTER + r"(?:\s*+[.):]|\s*+$|\s)")
# Indentation within one line: a run of blank lines is not searched again from every line.
_OPTION_LINE = re.compile(r"^[^\S\n]*+(?:\([A-J]\)|\[[A-J]\]|[A-J][.):])\s", re.MULTILINE)
# Only the phrase: what follows it is read word by word (see _by_option_text), so that a phrase
# inside the text after another ("Answer:\nThe answer is Atrophy.") is found too.
_ANSWER_PHRASE = re.compile(
    r"\b(?:the\s+)?(?:final\s+|correct\s+|best\s+)?answer\s*+(?:is\s*+:?|:)\s*+",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


def extract_answer(text: str, options: Mapping[str, str]) -> Extraction | None:
    """The answer letter (one of ``options``' keys) that ``text`` concludes with, or None."""
    letters = set(options)
    for pattern in (_EXPLICIT, _STATED):
        found = _last_letter_match(pattern, text, letters)
        if found is not None:
            return found
    # A reply that repeats the option list starts with "A." without choosing it.
    bare = _BARE.match(text) if len(_OPTION_LINE.findall(text)) < 2 else None
    if bare is not None:
        letter, start, end = _letter_of(bare)
        if letter.upper() in letters and (letter.isupper() or bare.group("l") is None):
            return Extraction(letter.upper(), start, end, bare.start("phrase"))
    return _by_option_text(text, options)


def _last_letter_match(pattern: re.Pattern[str], text: str, letters: set[str]) -> Extraction | None:
    found: Extraction | None = None
    for match in pattern.finditer(text):
        letter, start, end = _letter_of(match)
        # Lower-case letters count only in brackets: "the answer is a ..." is an article.
        if match.group("l") is not None and not letter.isupper():
            continue
        if letter.upper() in letters:
            found = Extraction(letter.upper(), start, end, match.start("phrase"))
    return found


def _letter_of(match: re.Match[str]) -> tuple[str, int, int]:
    for group in ("p", "b", "l"):
        if match.group(group) is not None:
            return match.group(group), match.start(group), match.end(group)
    raise AssertionError("the letter pattern always captures one group")  # pragma: no cover


def _by_option_text(text: str, options: Mapping[str, str]) -> Extraction | None:
    """'The answer is Atrophy.': the option whose text the answer phrase names, if exactly one."""
    found: Extraction | None = None
    named = {letter: words for letter, option in options.items() if (words := _words(option))}
    if not named:
        return None
    longest = max(len(words) for words in named.values())
    for match in _ANSWER_PHRASE.finditer(text):
        # The words after the phrase, on its line, as many as the longest option has: enough to
        # compare, and bounded, so many phrases on one long line stay cheap.
        at = match.end()
        line_end = text.find("\n", at)
        stated = _words(text, at, len(text) if line_end < 0 else line_end, limit=longest)
        # Whole words: "cellulose" does not name the option "Cell".
        hits = [letter for letter, words in named.items() if stated[: len(words)] == words]
        if len(hits) == 1:
            # No letter in the text: the span is empty, at the start of the named text.
            found = Extraction(hits[0], at, at, match.start())
    return found


def _words(
    text: str, start: int = 0, end: int | None = None, limit: int | None = None
) -> list[str]:
    """The lower-cased words of ``text[start:end]`` (punctuation and spacing ignored)."""
    end = len(text) if end is None else end
    words = (m.group().lower() for m in _WORD.finditer(text, start, end))
    return list(itertools.islice(words, limit))


def rewrite_letter(text: str, extraction: Extraction, letter: str) -> str:
    """``text`` with the extracted answer letter replaced by ``letter``."""
    if extraction.start == extraction.end:
        return text
    return text[: extraction.start] + letter + text[extraction.end :]


# Letters that a reply explicitly names as options: "(B)", "option B", "choice B", "answer B",
# and "B." / "B)" at the start of a line. Bare letters inside prose are left alone: "a B cell"
# must not become "a D cell".
_NAMED_LETTER = re.compile(
    r"\((?P<p>[A-J])\)"
    r"|\b(?:option|choice|answer)\s++(?P<w>[A-J])\b"
    r"|^(?P<s>[^\S\n]*+)(?P<h>[A-J])(?=[.)]\s)",
    re.MULTILINE | re.IGNORECASE,
)


def reletter(text: str, mapping: Mapping[str, str]) -> str:
    """Rename the option letters a reply names explicitly, in one pass (no double renaming)."""

    def swap(match: re.Match[str]) -> str:
        for group in ("p", "w", "h"):
            letter = match.group(group)
            if letter is not None:
                if not letter.isupper() or letter not in mapping:
                    return match.group(0)
                start = match.start(group) - match.start(0)
                end = match.end(group) - match.start(0)
                whole = match.group(0)
                return whole[:start] + mapping[letter] + whole[end:]
        return match.group(0)  # pragma: no cover

    return _NAMED_LETTER.sub(swap, text)
