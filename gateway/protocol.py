"""OpenAI wire models, named as OpenAI names them.

Requests are validated here and then forwarded as the client sent them (minus what the gateway
rewrites), so parameters the gateway does not model itself, such as ``logit_bias`` or vLLM's
``top_k``, pass through to the engine untouched. Responses from engines are passed through as
they are; the models below describe them for the OpenAPI schema.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import InvalidRequestError

# Strict: OpenAI rejects "0.5" for a number and "true" for a boolean; so do we.
_REQUEST = ConfigDict(extra="allow", strict=True)


class ContentPart(BaseModel):
    """One part of a message's content; text parts are checked, others pass to the engine."""

    model_config = _REQUEST
    type: str

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and not isinstance(getattr(self, "text", None), str):
            raise ValueError("a content part of type 'text' needs a string 'text'")
        return self


#: OpenAI's rule for function names (tools, tool calls, a named tool_choice)
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    model_config = _REQUEST
    name: str = Field(pattern=_FUNCTION_NAME)
    #: a JSON object as a string, as the model wrote it (OpenAI never parses it)
    arguments: str


class ToolCall(BaseModel):
    """One call in an assistant message's ``tool_calls``, as the client sends it back."""

    model_config = _REQUEST
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = _REQUEST
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    #: assistant messages: the calls the model made (content may then be null)
    tool_calls: list[ToolCall] | None = None
    #: tool messages: the call this message answers
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    model_config = _REQUEST
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    #: a JSON Schema object; the engine checks it when it constrains a call to it
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _REQUEST
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _REQUEST
    name: str = Field(pattern=_FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: this call, forced."""

    model_config = _REQUEST
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = _REQUEST
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _REQUEST
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


_OPTION_LETTERS = "ABCDEFGHIJ"
_PIPELINE_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class SwitchboardExtension(BaseModel):
    """The request extension ``"switchboard": {...}``: Switchboard's own fields, never sent on.

    ``pipeline`` picks a pipeline when the client calls a model or adapter directly (a route's
    variants choose their own). ``question`` and ``options`` give a multiple-choice question
    structured, instead of leaving the pipeline to find it in the last user message.
    """

    # Forbid: a misspelt field here must be a 400, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)
    pipeline: str | None = Field(default=None, pattern=_PIPELINE_NAME)
    question: str | None = Field(default=None, min_length=1, max_length=100_000)
    options: dict[str, str] | None = None

    @model_validator(mode="after")
    def _lettered_options(self) -> SwitchboardExtension:
        if self.options is None:
            if self.question is not None:
                raise ValueError("switchboard.question: needs 'options' beside it")
            return self
        expected = list(_OPTION_LETTERS[: len(self.options)])
        if not 2 <= len(self.options) <= len(_OPTION_LETTERS) or list(self.options) != expected:
            raise ValueError(
                "switchboard.options: 2 to 10 options lettered A, B, C, ... in order, "
                'e.g. {"A": "...", "B": "..."}'
            )
        if not all(text.strip() for text in self.options.values()):
            raise ValueError("switchboard.options: every option needs a non-empty text")
        return self


#: roles whose messages must carry content (assistant messages may hold only tool calls)
_CONTENT_REQUIRED = frozenset({"system", "developer", "user"})


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields are allowed and passed to the engine."""

    model_config = _REQUEST
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: Switchboard's extension; pipelines strip it before anything goes to an engine
    switchboard: SwitchboardExtension | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        for i, message in enumerate(self.messages):
            # OpenAI refuses these too; an engine would render an empty turn without a word.
            if message.content is None and message.role in _CONTENT_REQUIRED:
                raise ValueError(f"messages[{i}].content: a {message.role} message needs content")
            _check_tool_turn(i, message)
        _check_tool_choice(self.tools, self.tool_choice)
        return self

    @property
    def uses_tools(self) -> bool:
        """Whether the model may (or must) call one of the request's tools."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def output_limit(self) -> int | None:
        """The completion-token bound the client asked for, whichever name it used."""
        return self.max_completion_tokens or self.max_tokens


def _check_tool_turn(i: int, message: ChatMessage) -> None:
    # OpenAI's own rules: a tool result names its call; only the assistant makes calls.
    if message.role == "tool" and not message.tool_call_id:
        raise ValueError(f"messages[{i}].tool_call_id: a tool message needs the id of its call")
    if message.tool_calls is not None and message.role != "assistant":
        raise ValueError(f"messages[{i}].tool_calls: only assistant messages make tool calls")


def _check_tool_choice(
    tools: list[Tool] | None, choice: Literal["none", "auto", "required"] | NamedToolChoice | None
) -> None:
    if choice is None:
        return
    if not tools:
        raise ValueError("tool_choice: only allowed when 'tools' are given")
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in tools]
        if choice.function.name not in names:
            raise ValueError(
                f"tool_choice: the function '{choice.function.name}' is not among the tools "
                f"({', '.join(names)})"
            )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "switchboard"
    #: for adapters, the base model they apply to; None for base models
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a metric value (or a comment) for one inference."""

    model_config = ConfigDict(extra="forbid", strict=True)
    inference_id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=100)
    value: bool | float | str

    @property
    def kind(self) -> Literal["boolean", "float", "comment"]:
        if isinstance(self.value, bool):
            return "boolean"
        return "comment" if isinstance(self.value, str) else "float"


class Feedback(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    inference_id: str
    name: str
    value: bool | float | str
    created: int


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    variant: str = Field(min_length=1)


def invalid_from_validation(exc: ValidationError) -> InvalidRequestError:
    """The first pydantic error as OpenAI's 400, with ``param`` naming the field."""
    err = exc.errors(include_url=False)[0]
    param = _param_path(err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if param is None and ": " in message:
        # Cross-field checks say which field they are about before the colon.
        param, message = message.split(": ", 1)
    where = f"'{param}': " if param else ""
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return InvalidRequestError(f"Invalid request: {where}{message}{more}", param=param)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in _UNION_TAGS:
            # pydantic names union branches in the location; they are not the client's keys
            continue
        else:
            path += f".{part}" if path else part
    return path or None
