"""Choice-shuffle ensembles: balanced option orders, mapping answers back, and the vote.

A small model often prefers a position ("always A") rather than an answer. Asking the same
question k times with the options in different orders and voting in the original lettering
turns that position bias into spread-out votes instead of a confident wrong answer; a model
that does know the answer votes for it from every position.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True, slots=True)
class Shuffle:
    """One member's option order: ``order[position]`` is the index of the original option."""

    order: tuple[int, ...]

    @property
    def is_identity(self) -> bool:
        return all(i == p for p, i in enumerate(self.order))

    def shown(self, options: Mapping[str, str]) -> dict[str, str]:
        """The options as this member sees them, relettered A, B, ... in the shuffled order."""
        texts = list(options.values())
        return {LETTERS[p]: texts[i] for p, i in enumerate(self.order)}

    def to_original(self, letter: str) -> str:
        """The original letter of the option shown at ``letter``."""
        return LETTERS[self.order[LETTERS.index(letter)]]

    def mapping(self) -> dict[str, str]:
        """Shown letter -> original letter, for every position."""
        return {LETTERS[p]: LETTERS[i] for p, i in enumerate(self.order)}

    def label(self) -> str:
        """The original letters in shown order, e.g. 'CDAB'."""
        return "".join(LETTERS[i] for i in self.order)


def balanced_shuffles(n_options: int, k: int, seed: str) -> list[Shuffle]:
    """``k`` option orders in which each option visits each position as evenly as k allows.

    Orders come in blocks of ``n_options`` cyclic shifts of a base order: within a full block
    every option takes every position exactly once, and a partial last block uses each
    (option, position) pair at most once, so the counts per pair differ by at most one. The
    first member is the original order, so a tie (broken towards earlier members) and the
    reply shown to the client favour the order the client wrote. Later bases and the order of
    shifts come from ``seed``: the same seed always gives the same orders.
    """
    if not 1 <= n_options <= len(LETTERS):
        raise ValueError(f"between 1 and {len(LETTERS)} options are supported, not {n_options}")
    if k < 1:
        raise ValueError("an ensemble needs at least one member")
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    indices = list(range(n_options))
    orders: list[Shuffle] = []
    first = True
    while len(orders) < k:
        if first:
            base, shifts = indices, [0, *rng.sample(indices[1:], n_options - 1)]
            first = False
        else:
            base, shifts = rng.sample(indices, n_options), rng.sample(indices, n_options)
        for shift in shifts:
            order = tuple(base[(p + shift) % n_options] for p in range(n_options))
            orders.append(Shuffle(order))
    return orders[:k]


def identity(n_options: int) -> Shuffle:
    return Shuffle(tuple(range(n_options)))


def tally(answers: Sequence[str | None], letters: Sequence[str]) -> dict[str, int]:
    """Votes per original letter, every letter listed (zeros included); abstentions ignored."""
    votes = dict.fromkeys(letters, 0)
    for answer in answers:
        if answer is not None and answer in votes:
            votes[answer] += 1
    return votes


def winner(answers: Sequence[str | None]) -> str | None:
    """The majority letter; a tie goes to the tied letter whose first vote came earliest.

    Members are ordered (the first shows the original order), so the tie-break is
    deterministic and does not prefer any letter of the alphabet.
    """
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first_seen.setdefault(answer, index)
    if not counts:
        return None
    return min(counts, key=lambda letter: (-counts[letter], first_seen[letter]))
