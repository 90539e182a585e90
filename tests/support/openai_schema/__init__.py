"""OpenAI's published response schemas, vendored (see README.md), and a validator for them.

``assert_valid("CreateChatCompletionResponse", body)`` fails with every place where ``body``
breaks the schema, each with its JSON path, so one run shows all that is wrong.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).with_name("schemas.json")


@functools.cache
def document() -> dict[str, Any]:
    data: dict[str, Any] = _nullable(json.loads(SCHEMAS.read_text("utf-8")))
    return data


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema says it: null among the types.

    The description is 3.1 (JSON Schema 2020-12), but some of its schemas still use the 3.0
    keyword, which a JSON Schema validator ignores; without this, every stream chunk's
    ``finish_reason: null`` would be reported although OpenAI itself sends it.
    """
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out:
            out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
    return out


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one named schema; its ``$ref``s resolve inside the vendored document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document()["components"]}
    return jsonschema.Draft202012Validator(root)


def problems(name: str, instance: Any) -> list[str]:
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator(name).iter_errors(instance), key=lambda e: e.json_path)
    ]


def assert_valid(name: str, instance: Any) -> None:
    found = problems(name, instance)
    assert not found, f"not a valid {name}:\n" + "\n".join(found)
