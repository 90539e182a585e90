"""What a voting pipeline accepts from the client and sends to its members: the checks that
refuse what it cannot honour, the sampling settings it passes on, and the structured outputs
that hold a member to an option letter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.pipelines import prompt
from gateway.pipelines.loader import Pipeline
from gateway.protocol import ChatCompletionRequest

#: the client's fields a pipeline's members never receive
OWN_FIELDS = (
    "messages",
    "stream",
    "stream_options",
    "n",
    "switchboard",
    # A pipeline's members answer its own prompt; the client's tools are not theirs to call.
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


def check_tools(pipeline: Pipeline, chat: ChatCompletionRequest) -> None:
    """A pipeline that writes its own prompt cannot let the model call the client's tools.

    Refused whatever the request holds (not only when a question is found), so a route's
    answer to a tools request does not depend on how the last message happens to read.
    """
    if pipeline.passthrough or not getattr(chat, "uses_tools", False):
        return
    raise InvalidRequestError(
        f"'tools' cannot be used with the pipeline '{pipeline.name}': it writes its own prompt "
        "and answers by vote, so the model cannot call your tools. Send tool_choice 'none', "
        "or call a model, an adapter or a route whose variants use the 'plain' pipeline.",
        param="tools",
        code="tools_not_supported",
    )


def check_request(pipeline: Pipeline, chat: ChatCompletionRequest) -> None:
    """Refuse what a voting pipeline cannot honour, rather than ignore it."""
    if chat.n is not None and chat.n > 1:
        raise InvalidRequestError(
            f"'n' must be 1 with the pipeline '{pipeline.name}': it answers once, by vote.",
            param="n",
        )
    if chat.response_format is not None and chat.response_format.type != "text":
        raise InvalidRequestError(
            f"'response_format' cannot be used with the pipeline '{pipeline.name}': it writes "
            "its own answer format.",
            param="response_format",
        )


def sampling(pipeline: Pipeline, upstream: dict[str, Any]) -> dict[str, Any]:
    """The client's sampling settings over the pipeline's defaults."""
    generate = pipeline.spec.generate
    params = {k: v for k, v in upstream.items() if k not in OWN_FIELDS}
    if "max_tokens" not in params and "max_completion_tokens" not in params:
        params["max_tokens"] = generate.max_tokens
    params.setdefault("temperature", generate.temperature)
    return params


def constraint(pipeline: Pipeline, letters: Sequence[str]) -> dict[str, Any]:
    """vLLM structured outputs for the main generation, if the pipeline asks for them."""
    generate = pipeline.spec.generate
    if generate.constrain == "choice":
        return {"structured_outputs": {"choice": list(letters)}}
    if generate.constrain == "regex" and generate.regex is not None:
        regex = generate.regex.replace("{letters}", klass(letters))
        return {"structured_outputs": {"regex": regex}}
    return {}


def klass(letters: Sequence[str]) -> str:
    return "[" + "".join(letters) + "]"


def letter_request(
    messages: list[prompt.Message], reasoning: str, letters: list[str]
) -> dict[str, Any]:
    """Continue the member's own reply after 'Answer:' with exactly one option letter."""
    so_far = f"{reasoning}\n\nAnswer:" if reasoning else "Answer:"
    return {
        "messages": [*messages, {"role": "assistant", "content": so_far}],
        "max_tokens": 2,
        "temperature": 0,
        "continue_final_message": True,
        "add_generation_prompt": False,
        "structured_outputs": {"choice": [f" {letter}" for letter in letters]},
    }
