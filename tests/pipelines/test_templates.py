"""Templates: sandboxed, strict, checked at startup; user text is data, never template source."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_config, parse_config
from gateway.datasets import split_of
from gateway.errors import ConfigError, PipelineError
from gateway.pipelines import prompt
from gateway.pipelines.loader import load_pipeline, load_pipelines
from gateway.resolve import resolve
from gateway.settings import Settings

INJECTIONS = [
    "{{7*7}}",
    "{{ ''.__class__ }}",
    "{% for x in range(3) %}loop{% endfor %}",
    "{{ config }}{% include 'system.j2' %}",
    "{# comment #}{%- raw %}",
]

CONFIG = """
models:
  m: {engine: vllm, urls: ["http://127.0.0.1:9"]}
pipelines:
  folders: [extra]
"""


def test_shipped_pipelines_load_and_their_bank_holds_training_items_only() -> None:
    pipelines = load_pipelines(parse_config("models: {m: {engine: vllm, urls: [http://x]}}", "t"))
    assert {"plain", "cot", "medprompt"} <= set(pipelines)
    assert pipelines["plain"].passthrough
    bank = pipelines["medprompt"].bank
    assert bank is not None and len(bank) >= 10
    assert all(split_of(e.id) == "train" for e in bank.exemplars)


@pytest.mark.parametrize("attack", INJECTIONS)
def test_injection_in_user_text_comes_out_verbatim(attack: str) -> None:
    pipelines = load_pipelines(parse_config("models: {m: {engine: vllm, urls: [http://x]}}", "t"))
    medprompt = pipelines["medprompt"]
    options = {"A": attack, "B": "plain option"}
    text = prompt.question_turn(medprompt, f"Question {attack} end", options)
    assert f"Question {attack} end" in text
    assert f"(A) {attack}" in text
    assert "49" not in text and "<class" not in text and "looplooploop" not in text


def _pipeline(tmp_path: Path, question: str, *, yaml_extra: str = "") -> Path:
    folder = tmp_path / "extra" / "mine"
    folder.mkdir(parents=True)
    (folder / "pipeline.yaml").write_text(
        f"render:\n  system: system.j2\n  question: question.j2\n{yaml_extra}"
    )
    (folder / "system.j2").write_text("Letters: {{ letters | join(', ') }}\n")
    (folder / "question.j2").write_text(question)
    return folder


@pytest.mark.parametrize(
    ("source", "line", "words"),
    [
        ("{{ question }}\n\n{% for o in options %}\n{{ o.letter }\n{% endfor %}\n", 4, "syntax"),
        ("{{ question }}\n{{ qestion }}\n", 2, "unknown variable 'qestion'"),
        ("{{ question }}\n\n\n{{ question.nope }}\n", 4, "nope"),
        # The sandbox refuses dunder access in the template itself, at startup.
        ("line one\n{{ question.__class__.__mro__ }}\n", 2, "__class__"),
        ("{% for o in options %}{{ o.letter }}{% endfor %}\n{{ answer }}\n", 2, "'answer'"),
    ],
)
def test_a_broken_template_fails_naming_file_and_line(
    tmp_path: Path, source: str, line: int, words: str
) -> None:
    folder = _pipeline(tmp_path, source)
    with pytest.raises(PipelineError) as info:
        load_pipeline("mine", folder)
    message = str(info.value)
    assert f"{folder / 'question.j2'}, line {line}" in message
    assert words in message


def test_gateway_yaml_check_and_startup_report_broken_templates(tmp_path: Path) -> None:
    _pipeline(tmp_path, "{{ question }}\n{{ missing }}\n")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(CONFIG)
    with pytest.raises(ConfigError) as info:
        resolve(load_config(config_file), Settings(home=tmp_path / "home"))
    assert any("question.j2, line 2" in p and "'missing'" in p for p in info.value.problems)


def test_pipeline_yaml_unknown_key_and_missing_template_are_reported(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path, "{{ question }}\n", yaml_extra="retreive: {k: 3}\n")
    with pytest.raises(PipelineError) as info:
        load_pipeline("mine", folder)
    assert "retreive: unknown key" in str(info.value)
    (folder / "pipeline.yaml").write_text("render: {question: nope.j2}\n")
    with pytest.raises(PipelineError) as info:
        load_pipeline("mine", folder)
    assert "nope.j2" in str(info.value)


def test_a_configured_folder_adds_pipelines(tmp_path: Path) -> None:
    _pipeline(tmp_path, "Q: {{ question }}\n")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(CONFIG)
    pipelines = load_pipelines(load_config(config_file))
    assert "mine" in pipelines and "medprompt" in pipelines
    mine = pipelines["mine"]
    assert prompt.question_turn(mine, "Why?", {"A": "x", "B": "y"}) == "Q: Why?"
