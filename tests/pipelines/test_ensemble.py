"""Choice shuffling: balanced orders, answers mapped back to the original letters, the vote."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gateway.pipelines.ensemble import LETTERS, Shuffle, balanced_shuffles, tally, winner

n_options = st.integers(min_value=2, max_value=10)
members = st.integers(min_value=1, max_value=24)
seeds = st.text(max_size=20)


@given(n_options, members, seeds)
def test_orders_are_permutations_deterministic_and_balanced(n: int, k: int, seed: str) -> None:
    shuffles = balanced_shuffles(n, k, seed)
    assert len(shuffles) == k
    assert shuffles == balanced_shuffles(n, k, seed)
    for s in shuffles:
        assert sorted(s.order) == list(range(n))
    assert shuffles[0].is_identity
    # Each option visits each position as evenly as k allows: counts differ by at most one.
    counts = Counter(
        (option, position) for s in shuffles for position, option in enumerate(s.order)
    )
    per_pair = [counts.get((o, p), 0) for o in range(n) for p in range(n)]
    assert max(per_pair) - min(per_pair) <= 1
    if k % n == 0:
        assert set(per_pair) == {k // n}


@given(st.integers(min_value=2, max_value=10).flatmap(lambda n: st.permutations(range(n))))
def test_any_permutation_maps_a_shown_answer_back_to_its_option(order: list[int]) -> None:
    n = len(order)
    options = {LETTERS[i]: f"text {i}" for i in range(n)}
    shuffle = Shuffle(tuple(order))
    shown = shuffle.shown(options)
    assert sorted(shown.values()) == sorted(options.values())
    for shown_letter, text in shown.items():
        original = shuffle.to_original(shown_letter)
        assert options[original] == text
        assert shuffle.mapping()[shown_letter] == original


@given(n_options.flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), members, seeds)
def test_a_model_that_knows_the_answer_gets_every_vote(
    case: tuple[int, int], k: int, seed: str
) -> None:
    n, right = case
    options = {LETTERS[i]: f"text {i}" for i in range(n)}
    answers = []
    for shuffle in balanced_shuffles(n, k, seed):
        shown = shuffle.shown(options)
        pick = next(letter for letter, text in shown.items() if text == f"text {right}")
        answers.append(shuffle.to_original(pick))
    votes = tally(answers, list(options))
    assert votes[LETTERS[right]] == k and sum(votes.values()) == k
    assert winner(answers) == LETTERS[right]


@given(n_options, seeds)
def test_a_position_biased_model_spreads_its_votes(n: int, seed: str) -> None:
    """Always answering the first position: one full block gives each option one vote."""
    shuffles = balanced_shuffles(n, n, seed)
    answers = [s.to_original("A") for s in shuffles]
    assert tally(answers, LETTERS[:n]) == dict.fromkeys(LETTERS[:n], 1)


def test_tie_goes_to_the_earliest_member_and_abstentions_do_not_count() -> None:
    assert winner(["B", "C", "C", "B", None]) == "B"
    assert winner([None, "D", "A"]) == "D"
    assert winner([None, None]) is None
    assert tally(["A", None, "A", "Z"], ["A", "B"]) == {"A": 2, "B": 0}


def test_labels_show_the_original_letters_in_shown_order() -> None:
    assert Shuffle((2, 3, 0, 1)).label() == "CDAB"
    assert Shuffle((2, 3, 0, 1)).to_original("A") == "C"
