"""Re-extract ``schemas.json`` from OpenAI's OpenAPI description (run by hand, not by tests).

    python -m tests.support.openai_schema.extract PATH/TO/openapi.json COMMIT

Takes the response schemas the gateway's tests validate against and every schema they
reference, nothing else, so the vendored file stays small and reviewable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateChatCompletionRequest",
)
HERE = Path(__file__).parent
PREFIX = "#/components/schemas/"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.removeprefix(PREFIX)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = spec["components"]["schemas"]
    wanted: dict[str, Any] = {}
    stack = list(ROOTS)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted[name] = schemas[name]
            stack.extend(_refs(schemas[name]))
    return {name: wanted[name] for name in sorted(wanted)}


def main(path: str, commit: str) -> None:
    spec = json.loads(Path(path).read_text("utf-8"))
    out = {
        "source": "https://github.com/openai/openai-openapi/blob/" + commit + "/openapi.json",
        "commit": commit,
        "openapi": spec["openapi"],
        "version": spec["info"]["version"],
        "components": {"schemas": extract(spec)},
    }
    (HERE / "schemas.json").write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
