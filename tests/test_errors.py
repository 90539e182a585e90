"""The error tree: every exception class of the package lives in gateway/errors.py, drawn true.

Read with ``ast`` rather than by importing, so that a class in a module nothing imports (or one
behind an optional dependency) is found too.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import gateway
from gateway import errors
from gateway.errors import (
    GatewayError,
    InternalServerError,
    InvalidRequestError,
    StoreUnavailableError,
    UnroutedRequestError,
    render,
)

PACKAGE = Path(gateway.__file__).parent
ERRORS = PACKAGE / "errors.py"
#: One line of the drawing: the branches, then a class name.
TREE_LINE = re.compile(r"^(?P<branches>[ │├└─]*)(?P<name>[A-Z]\w+)\b")


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def _is_exception_name(name: str) -> bool:
    """A builtin exception, or by name one of a library's (``jinja2.TemplateError``)."""
    value = getattr(builtins, name, None)
    if isinstance(value, type) and issubclass(value, BaseException):
        return True
    return name.endswith(("Error", "Exception"))


def _exception_classes() -> dict[str, Path]:
    """Every class under gateway/ that derives, directly or not, from an exception."""
    classes: dict[str, tuple[Path, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes[f"{path}:{node.name}"] = (path, _base_names(node))
    found: dict[str, Path] = {}
    grew = True
    while grew:  # a class is an exception if one of its bases is (to a fixed point)
        grew = False
        for key, (path, bases) in classes.items():
            name = key.rsplit(":", 1)[1]
            if key not in found and any(_is_exception_name(b) or b in found for b in bases):
                found[key] = path
                found[name] = path
                grew = True
    return {k.rsplit(":", 1)[1]: p for k, p in found.items() if ":" in k}


def _tree() -> dict[str, str | None]:
    """The docstring's drawing as ``{class: parent}`` (``None`` for the root)."""
    doc = ast.get_docstring(ast.parse(ERRORS.read_text(encoding="utf-8")))
    assert doc is not None
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in block.splitlines():
        match = TREE_LINE.match(line.removeprefix("    "))
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["branches"]) // 4
        del path[depth:]
        parents[match["name"]] = path[-1] if path else None
        path.append(match["name"])
    return parents


def test_every_exception_class_is_defined_in_errors_py() -> None:
    elsewhere = {
        name: str(path.relative_to(PACKAGE.parent))
        for name, path in _exception_classes().items()
        if path != ERRORS
    }
    assert elsewhere == {}, "move these into gateway/errors.py (and its docstring tree)"


def test_the_docstring_tree_draws_every_class_under_its_base() -> None:
    drawn = _tree()
    defined = [name for name, path in _exception_classes().items() if path == ERRORS]
    assert sorted(drawn) == sorted(defined)
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        # The first base that is part of the tree: BankError(InputError, ValueError) sits
        # under InputError.
        tree_bases = [b.__name__ for b in cls.__bases__ if b.__name__ in drawn]
        assert (tree_bases[0] if tree_bases else None) == parent, name


def test_render_is_openais_error_shape() -> None:
    error = InvalidRequestError("bad 'n'", param="n", code="too_many")
    assert render(error) == error.to_dict()
    assert render(error) == {
        "error": {
            "message": "bad 'n'",
            "type": "invalid_request_error",
            "param": "n",
            "code": "too_many",
        }
    }


def test_errors_built_from_the_framework_keep_their_wire_form() -> None:
    unrouted = UnroutedRequestError(405, "Method Not Allowed", headers={"Allow": "POST"})
    assert (unrouted.status_code, unrouted.headers) == (405, {"Allow": "POST"})
    assert render(unrouted)["error"]["type"] == "invalid_request_error"
    assert UnroutedRequestError(503, "down").error_type == "server_error"
    # The instance's status never leaks into the class (nor into other errors).
    assert (UnroutedRequestError.status_code, GatewayError.status_code) == (500, 500)
    internal = render(InternalServerError())["error"]
    assert internal["type"] == "server_error" and "logged" in internal["message"]
    store = StoreUnavailableError("The event database is unavailable: locked. Retry later.")
    assert store.status_code == 503 and store.headers == {"Retry-After": "5"}
    assert render(store)["error"]["code"] == "store_unavailable"
