"""The render step: a pipeline's templates and the request's data -> chat messages.

Order matters for vLLM's prefix cache: the system message and the few-shot turns are the same
for every ensemble member, and within the final turn the question comes before the options, so
only the tail (the shuffled options) differs between members and the rest is computed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.pipelines.bank import Exemplar
from gateway.pipelines.loader import Pipeline

Message = dict[str, Any]


def option_list(options: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"letter": letter, "text": text} for letter, text in options.items()]


def question_turn(pipeline: Pipeline, question: str, options: Mapping[str, str]) -> str:
    template = pipeline.template("question")
    assert template is not None, "a pipeline with a render step has a question template"
    return template.render(
        {"question": question, "options": option_list(options), "letters": list(options)}
    )


def shared_prefix(
    pipeline: Pipeline, letters: Sequence[str], exemplars: Sequence[Exemplar]
) -> list[Message]:
    """System message and few-shot turns: identical for every member of an ensemble."""
    messages: list[Message] = []
    system = pipeline.template("system")
    if system is not None:
        messages.append({"role": "system", "content": system.render({"letters": list(letters)})})
    answer = pipeline.template("exemplar_answer")
    for exemplar in exemplars:
        assert answer is not None, "the spec requires exemplar_answer with retrieve"
        messages.append(
            {
                "role": "user",
                "content": question_turn(pipeline, exemplar.question, exemplar.options),
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": answer.render(
                    {
                        "reasoning": exemplar.reasoning,
                        "answer": exemplar.answer,
                        "answer_text": exemplar.options[exemplar.answer],
                        "letters": list(exemplar.options),
                    }
                ),
            }
        )
    return messages


def member_messages(
    pipeline: Pipeline,
    prefix: Sequence[Message],
    question: str,
    shown_options: Mapping[str, str],
) -> list[Message]:
    return [
        *prefix,
        {"role": "user", "content": question_turn(pipeline, question, shown_options)},
    ]


def prompt_chars(messages: Sequence[Message]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


def freeform_messages(pipeline: Pipeline, messages: Sequence[Any]) -> list[Any]:
    """The client's messages, after the pipeline's free-form system message if it has one."""
    template = pipeline.template("freeform_system")
    if template is None:
        return list(messages)
    return [{"role": "system", "content": template.render({})}, *messages]
