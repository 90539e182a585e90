"""Evaluation data files: items, the header line, the split, and errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.datasets import content_id, split_of
from gateway.errors import DataError
from gateway.evaluation.data import EvalItem, read_eval_data
from gateway.evaluation.scoring import ScorerSpec
from gateway.learned import mc_content_id, prompt_content_id


def ids(split: str, count: int, prefix: str = "q") -> list[str]:
    """Ids on one side of the fixed split (it is a function of the id alone)."""
    found = [f"{prefix}-{n}" for n in range(400) if split_of(f"{prefix}-{n}") == split]
    return found[:count]


def mc(item_id: str, answer: str = "B") -> dict[str, Any]:
    return {
        "id": item_id,
        "question": f"Question {item_id}?",
        "options": {"A": "one", "B": "two", "C": "three"},
        "answer": answer,
    }


def write(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def packaged(split: str, count: int) -> list[dict[str, Any]]:
    """Items as `gateway data import mmlu` writes them: the id is the content id."""
    found = []
    for n in range(400):
        question, options = f"Packaged question {n}?", {"A": "one", "B": "two", "C": "three"}
        item_id = content_id("mmlu", question, options)
        if split_of(item_id) == split:
            found.append(
                {"id": item_id, "question": question, "options": options, "answer": "B",
                 "source": "mmlu"}
            )  # fmt: skip
    return found[:count]


def test_packaged_items_keep_the_fixed_split(tmp_path: Path) -> None:
    held, train = packaged("heldout", 3), packaged("train", 2)
    path = write(tmp_path / "d.jsonl", *held, *train)
    data, _ = read_eval_data(path)
    assert [i.id for i in data.items] == [i["id"] for i in held] and data.skipped_train == 2
    assert all(i.packaged_split == "heldout" for i in data.items)
    everything, _ = read_eval_data(path, split="all")
    assert len(everything.items) == 5


def test_a_users_own_file_is_read_whole_whatever_its_ids(tmp_path: Path) -> None:
    # Ids on both sides of the fixed split: it is the packaged data's, not the user's.
    held, train = ids("heldout", 3), ids("train", 2)
    path = write(tmp_path / "d.jsonl", *(mc(i) for i in [*held, *train]))
    data, spec = read_eval_data(path)
    assert [i.id for i in data.items] == [*held, *train] and data.skipped_train == 0
    assert spec == ScorerSpec("mc") and data.header is None
    request = data.items[0].request("medqa")
    assert request["model"] == "medqa"
    assert request["switchboard"] == {
        "question": f"Question {held[0]}?",
        "options": mc("x")["options"],
    }
    # The user message is the format adapters are trained on: options one a line, "A. ...".
    assert "\n\nA. one\nB. two\nC. three\n\n" in request["messages"][0]["content"]


def test_free_form_items_with_a_header_scorer(tmp_path: Path) -> None:
    held = ids("heldout", 2, "f")
    path = write(
        tmp_path / "d.jsonl",
        {"scorer": "numeric", "tolerance": 0.5},
        {"id": held[0], "prompt": "2 + 2?", "expected": 4},
        {"id": held[1], "messages": [{"role": "user", "content": "3 + 3?"}], "expected": "6"},
    )
    data, spec = read_eval_data(path)
    assert spec == ScorerSpec("numeric", tolerance=0.5) == data.header
    assert data.items[0].request("r")["messages"] == [{"role": "user", "content": "2 + 2?"}]
    assert "switchboard" not in data.items[1].request("r")
    # The command line wins over the header.
    _, cli = read_eval_data(path, scorer=ScorerSpec("exact"))
    assert cli == ScorerSpec("exact")


ONE_OPTION = {"id": "x", "question": "q?", "options": {"A": "a"}, "answer": "A"}
BAD_ANSWER = {"id": "x", "question": "q?", "options": {"A": "a", "B": "b"}, "answer": "E"}
ROBOT = {"id": "f1", "messages": [{"role": "robot", "content": "x"}], "expected": 1}
BOTH = {"id": "f1", "prompt": "hi", "messages": [], "expected": 1}
MANY = {"id": "f1", "prompt": "hi", "expected": "many"}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], "d.jsonl:1: not valid JSON"),
        (["[1, 2]"], "d.jsonl:1: expected a JSON object"),
        ([None, ONE_OPTION], "d.jsonl:2: 'options'"),
        ([None, BAD_ANSWER], "d.jsonl:2: 'answer' is 'E'"),
        ([None, None], "d.jsonl:2: duplicate id"),
        ([{"id": "f1", "prompt": "hi"}], "d.jsonl:1: missing 'expected'"),
        ([BOTH], "d.jsonl:1: give exactly one"),
        ([ROBOT], "d.jsonl:1: messages[0] needs a 'role'"),
        ([{"scorer": "numeric"}, MANY], "d.jsonl:2: 'expected' is \"many\", not a number"),
        ([{"scorer": "mc"}, MANY], "d.jsonl:2: the mc scorer needs a multiple-choice item"),
        ([{"scorer": "regex", "pattern": "("}], "d.jsonl:1: the pattern is not a valid regex"),
        ([{"scorer": "exact"}], "no items"),
    ],
)
def test_bad_data_names_the_line(tmp_path: Path, rows: list[Any], message: str) -> None:
    held = ids("heldout", 1)[0]
    filled = [mc(held) if r is None else r for r in rows]
    path = write(tmp_path / "d.jsonl", *filled)
    with pytest.raises(DataError) as caught:
        read_eval_data(path, split="all")
    assert message in str(caught.value)


def test_only_packaged_train_items_is_an_error_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", *packaged("train", 3))
    with pytest.raises(DataError, match=r"all 3 items are packaged items on the train side.*--sp"):
        read_eval_data(path)


def test_content_ids_ignore_spacing_case_and_lettering() -> None:
    base = EvalItem("a", 1, "B", "Which is a gas?", {"A": "Iron", "B": "Neon"})
    again = EvalItem("b", 2, "A", "which  is a GAS?", {"A": "neon", "B": "Iron"})
    other = EvalItem("c", 3, "A", "Which is a metal?", {"A": "Iron", "B": "Neon"})
    assert mc_content_id("Which is a gas?", {"X": "Neon", "Y": "Iron"}) in base.content_ids
    assert base.content_ids & again.content_ids and not base.content_ids & other.content_ids
    chat = EvalItem("d", 4, "x", messages=[{"role": "user", "content": "Hi  there"}])
    assert prompt_content_id([("user", "hi there")]) in chat.content_ids


def test_the_command_reports_bad_data_and_bad_options(tmp_path: Path) -> None:
    held = ids("heldout", 1)[0]
    path = write(tmp_path / "d.jsonl", mc(held), "{broken")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--data", str(path), "--route", "r"])
    assert result.exit_code == 2
    assert f"{path}:2: not valid JSON" in result.output
    good = write(tmp_path / "g.jsonl", mc(held))
    bad_scorer = runner.invoke(app, ["eval", "--data", str(good), "--route", "r", "--scorer", "x"])
    assert bad_scorer.exit_code == 2 and "--scorer x" in bad_scorer.output
    bad_split = runner.invoke(app, ["eval", "--data", str(good), "--route", "r", "--split", "x"])
    assert bad_split.exit_code == 2 and "--split" in bad_split.output
    missing = runner.invoke(app, ["eval", "--data", str(tmp_path / "nope.jsonl"), "--route", "r"])
    assert missing.exit_code == 2 and "cannot read" in missing.output
