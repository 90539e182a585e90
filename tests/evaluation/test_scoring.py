"""Scorers against hand-written replies and labels, and how a bad scorer is refused."""

from __future__ import annotations

import pytest

from gateway.errors import ScorerError
from gateway.evaluation.scoring import ScorerSpec, from_header, parse_cli, score

OPTIONS = {"A": "Atrophy", "B": "Hyperplasia", "C": "Metaplasia", "D": "Dysplasia"}


def test_mc_uses_the_pipelines_letter_and_falls_back_to_reading_the_reply() -> None:
    mc = ScorerSpec("mc")
    assert score(mc, "whatever", "C", extracted="C", options=OPTIONS) == (
        score(mc, "Answer: C", "C", options=OPTIONS)
    )
    assert score(mc, "blah", "C", extracted="C", options=OPTIONS).correct
    # The pipeline's letter wins over what the text seems to say.
    assert not score(mc, "Answer: C", "C", extracted="B", options=OPTIONS).correct
    # Nothing extracted: the pipelines' extraction reads the reply (here the option's text).
    result = score(mc, "The answer is Metaplasia.", "C", options=OPTIONS)
    assert result.answer == "C" and result.correct
    nothing = score(mc, "I am not sure.", "C", options=OPTIONS)
    assert nothing.answer is None and not nothing.correct


def test_exact_collapses_whitespace_and_case_unless_told() -> None:
    assert score(ScorerSpec("exact"), "  Paris \n", "paris").correct
    assert score(ScorerSpec("exact"), "New   York", "new york").correct
    assert not score(ScorerSpec("exact", case_sensitive=True), "Paris", "paris").correct
    assert not score(ScorerSpec("exact"), "Paris, France", "Paris").correct
    assert score(ScorerSpec("exact"), "42", 42).correct


def test_regex_takes_the_last_match_and_its_group() -> None:
    spec = parse_cli(r"regex:Answer:\s*(\w+)")
    result = score(spec, "Answer: maybe\nAnswer: Paris", "paris")
    assert result.answer == "Paris" and result.correct
    whole = parse_cli(r"regex:\d+")
    assert score(whole, "3 apples and 14 pears", "14").correct
    assert score(spec, "no answer here", "Paris") == (score(spec, "", "Paris"))
    assert score(spec, "no answer here", "Paris").answer is None


def test_json_field_from_a_reply_with_text_and_fences() -> None:
    spec = parse_cli("json:result.items.1")
    fenced = 'Here you go:\n```json\n{"result": {"items": ["x", "Yes"]}}\n```'
    assert score(spec, fenced, "yes").correct
    assert score(parse_cli("json:n"), 'The answer: {"n": 3.0} done', 3).correct
    assert not score(parse_cli("json:n"), '{"n": true}', 1).correct  # true is not 1
    assert score(parse_cli("json:ok"), '{"ok": false}', False).correct
    missing = score(spec, '{"result": {}}', "yes")
    assert missing.answer is None and not missing.correct
    assert not score(spec, "not json at all", "yes").correct


def test_numeric_reads_the_last_number_within_the_tolerance() -> None:
    spec = parse_cli("numeric:0.5")
    assert score(spec, "about 1,234.4 units", 1234).correct
    assert not score(spec, "about 1,234.6 units", 1234).correct
    assert score(spec, "first 7 then -3.25", "-3").correct
    exact = parse_cli("numeric")
    assert score(exact, "0.30000000000000004", 0.3).correct
    assert score(exact, "x = 2e3", 2000).answer == "2000"
    assert score(exact, "no digits", 1).answer is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus", "use mc, exact"),
        ("regex:(a)(b)", "at most one group"),
        ("regex:(", "not a valid regex"),
        ("numeric:abc", "not a number"),
        ("numeric:-1", ">= 0"),
        ("json:", "use mc, exact"),
    ],
)
def test_bad_cli_scorers(text: str, message: str) -> None:
    with pytest.raises(ScorerError, match=message):
        parse_cli(text)


def test_header_scorers_and_their_errors() -> None:
    spec = from_header({"scorer": "regex", "pattern": "x(\\d)", "case_sensitive": True}, "f:1")
    assert spec.describe() == {"kind": "regex", "pattern": "x(\\d)", "case_sensitive": True}
    assert from_header({"scorer": "numeric", "tolerance": 2}, "f:1").tolerance == 2.0
    for header, message in (
        ({"scorer": "fuzzy"}, "f:1: 'scorer' is \"fuzzy\""),
        ({"scorer": "json"}, "f:1: the json scorer needs a 'field'"),
        ({"scorer": "exact", "colour": 1}, "f:1: unknown header keys colour"),
        ({"scorer": "numeric", "tolerance": "0.1"}, "f:1: 'tolerance' must be a number"),
        ({"scorer": "exact", "case_sensitive": "yes"}, "f:1: 'case_sensitive' must be true"),
    ):
        with pytest.raises(ScorerError) as caught:
            from_header(header, "f:1")
        assert str(caught.value).startswith(message)
