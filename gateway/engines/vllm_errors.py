"""vLLM's 400 answers in the client's terms: OpenAI's error shape, ``param`` set, no pydantic dump.

vLLM validates a request with pydantic and answers ``{"error": {"message": "1 validation
error:\\n  {'type': ..., 'loc': 'body.messages.0.content', 'msg': ..., 'input': ...}", "param":
"body.messages.0.content", ...}}``: the message is a Python dict's repr and ``param`` carries
FastAPI's ``body.`` prefix. A client reads ``param`` as a path into its own request
(``messages[0].content``) and the message as a sentence, so both are rewritten here. Requests
for tool calling that the engine cannot serve name vLLM's command-line flags, which mean nothing
to a client: they become a sentence about the model and the operator's setting.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import orjson

from gateway.errors import UpstreamRejectedError

#: a line of vLLM's validation dump: "  {'type': ..., 'msg': ...}"
_DUMP_LINE = re.compile(r"^\s*(\{.*\})\s*$")
_DUMP_HEAD = re.compile(r"^\d+ validation errors?:")
_MSG = re.compile(r"""'msg': (?P<q>['"])(?P<msg>.*?)(?P=q)(?:, '|\})""")
_LOC = re.compile(r"'loc': '(?P<loc>[^']*)'")
_TOOL_FLAGS = ("--tool-call-parser", "--enable-auto-tool-choice")


def rejected_error(model_id: str, content: bytes, fallback: str) -> UpstreamRejectedError:
    """The gateway's 400 for a request vLLM refused as invalid."""
    error = _error_object(content)
    raw = error.get("message")
    message = raw if isinstance(raw, str) and raw else fallback
    param = client_param(error.get("param"))
    if any(flag in message for flag in _TOOL_FLAGS):
        return UpstreamRejectedError(
            f"The model '{model_id}' is served without tool calling, so it cannot choose or "
            "make tool calls ('tool_choice' other than 'none'). Send tool_choice 'none' or no "
            f"tools; an operator turns tool calling on with models.{model_id}.launch.tool_parser "
            "in gateway.yaml.",
            param="tool_choice",
            code="tool_calling_unavailable",
        )
    return UpstreamRejectedError(readable(message), param=param)


def readable(message: str) -> str:
    """A pydantic dump as sentences ("messages.0.content: Field required"); others unchanged."""
    lines = message.strip().splitlines()
    if not lines or not _DUMP_HEAD.match(lines[0]):
        return message
    found = [_sentence(line) for line in lines[1:]]
    sentences = [s for s in found if s]
    return "; ".join(sentences) if sentences else message


def client_param(param: Any) -> str | None:
    """``body.messages.0.content`` -> ``messages[0].content``: a path into the client's request."""
    if not isinstance(param, str) or not param:
        return None
    parts = param.split(".")
    if parts[0] == "body":
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or None


def _sentence(line: str) -> str | None:
    match = _DUMP_LINE.match(line)
    if match is None:
        return None
    entry = _literal(match.group(1))
    if entry is not None:
        msg, loc = entry.get("msg"), entry.get("loc")
    else:
        found, at = _MSG.search(match.group(1)), _LOC.search(match.group(1))
        msg = found.group("msg") if found else None
        loc = at.group("loc") if at else None
    if not isinstance(msg, str):
        return None
    msg = msg.removeprefix("Value error, ")
    where = client_param(".".join(map(str, loc)) if isinstance(loc, list | tuple) else loc)
    return f"{where}: {msg}" if where else msg


def _literal(text: str) -> dict[str, Any] | None:
    # literal_eval reads literals only (never runs code); an entry holding an exception's repr
    # in 'ctx' is not a literal, and the regex reads its 'msg' instead.
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _error_object(content: bytes) -> dict[str, Any]:
    """The error object of an OpenAI-shaped body (vLLM writes the nested and the flat form)."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    error = data.get("error", data)
    return error if isinstance(error, dict) else {}
