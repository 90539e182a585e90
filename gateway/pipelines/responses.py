"""What a pipeline answers: an OpenAI chat.completion (or its SSE stream) built from members.

The reply is the winning member's completion (its id, model and finish reason) with the content
the pipeline chose, the usage of every call summed, and the ``switchboard`` extension object.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
DONE = b"data: [DONE]\n\n"


def sum_usage(responses: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total = dict.fromkeys(USAGE_KEYS, 0)
    for response in responses:
        usage = response.get("usage") or {}
        for key in USAGE_KEYS:
            value = usage.get(key)
            if isinstance(value, int):
                total[key] += value
    return total


#: keys OpenAI's schema types as an object or array but never null, which vLLM sends as null
_NOT_NULL_IN_MESSAGE = ("annotations", "function_call", "audio", "tool_calls")
_NOT_NULL_IN_USAGE = ("prompt_tokens_details", "completion_tokens_details")


def conform_completion(response: dict[str, Any]) -> dict[str, Any]:
    """Make an engine's chat.completion valid against OpenAI's published schema, in place.

    vLLM writes every field of its own model, null where unset; OpenAI's schema (vendored in
    tests/support/openai_schema) forbids null for some and requires ``refusal`` in a message and
    in logprobs. Typed clients (openai-python, LangChain) read either; strict ones (a generated
    client validating the schema) refuse nulls, so they are dropped here. The body is already
    parsed on this path (the dispatcher adds the ``switchboard`` object), so this costs a few
    dictionary look-ups, not a parse.
    """
    for choice in response.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            for key in _NOT_NULL_IN_MESSAGE:
                if key in message and message[key] is None:
                    del message[key]
            message.setdefault("refusal", None)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            logprobs.setdefault("refusal", None)
    usage = response.get("usage")
    if isinstance(usage, dict):
        for key in _NOT_NULL_IN_USAGE:
            if key in usage and usage[key] is None:
                del usage[key]
    return response


def assembled_completion(
    base: Mapping[str, Any],
    content: str,
    finish_reason: str | None,
    usage: dict[str, int],
    extension: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": base.get("id", "chatcmpl-switchboard"),
        "object": "chat.completion",
        "created": base.get("created", int(time.time())),
        "model": base.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason or "stop",
            }
        ],
        "usage": usage,
        "switchboard": extension,
    }


def completion_as_sse(response: Mapping[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """An assembled completion as SSE: role, the whole content, the finish, usage, [DONE].

    The content goes in one chunk: an ensemble's answer exists only once all members are in.
    The final chunk carries the ``switchboard`` object, as the JSON response does.
    """
    choice = response["choices"][0]
    head = {
        "id": response["id"],
        "object": "chat.completion.chunk",
        "created": response["created"],
        "model": response["model"],
    }

    def event(chunk: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    delta_role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield event({**head, "choices": [delta_role]})
    content = choice["message"]["content"]
    yield event(
        {**head, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    )
    finish = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    yield event({**head, "choices": [finish], "switchboard": response["switchboard"]})
    if include_usage:
        yield event({**head, "choices": [], "usage": response["usage"]})
    yield DONE


class StreamReader:
    """Reads a pass-through SSE stream on the side (the bytes go on untouched).

    Collects the content of choice 0 and the usage, so a pass-through stream can still report
    the answer it contained.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.parts: list[str] = []
        self.usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: {"):
                    self._read(line[6:])

    def _read(self, data: bytes) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                piece = (choice.get("delta") or {}).get("content")
                if isinstance(piece, str):
                    self.parts.append(piece)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k, v in usage.items() if k in USAGE_KEYS and isinstance(v, int)}

    @property
    def content(self) -> str:
        return "".join(self.parts)


def content_of(response: Mapping[str, Any], index: int = 0) -> str:
    choices = response.get("choices") or []
    if len(choices) <= index:
        return ""
    message = choices[index].get("message") or {}
    content = message.get("content")
    return content if isinstance(content, str) else ""
