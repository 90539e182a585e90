"""Pipeline templates: sandboxed Jinja, compiled and checked once at startup.

Templates come from the pipeline's folder (trusted, reviewed files); everything a client sends
is passed to them as data and never compiled, so ``{{ 7*7 }}`` in a question stays text. The
environment is an ``ImmutableSandboxedEnvironment`` (no attribute tricks, no mutation of the
data) with ``StrictUndefined`` (a misspelt variable is an error, never an empty string).

Checking at startup has two parts: every name a template reads must be one its role provides
(found statically in the template's syntax tree, so the error names the line), and a trial
render with sample data must succeed (catches e.g. ``question.title`` on a string).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import TemplateError


@dataclass(frozen=True)
class CompiledTemplate:
    path: Path
    template: jinja2.Template

    def render(self, data: Mapping[str, Any]) -> str:
        try:
            return self.template.render(data)
        except jinja2.TemplateError as exc:
            raise TemplateError(self.path, _template_line(exc, self.path), str(exc)) from exc


def environment(folder: Path) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        # Prompts are plain text, not HTML: escaping would change what the model reads.
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def compile_template(
    env: jinja2.Environment,
    folder: Path,
    name: str,
    variables: frozenset[str],
    sample: Mapping[str, Any],
) -> CompiledTemplate:
    """Load ``folder/name``, check the names it reads against ``variables``, trial-render it."""
    path = folder / name
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(path, None, f"cannot read the template: {exc.strerror}") from None
    try:
        tree = env.parse(source, name=name, filename=str(path))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(path, exc.lineno, f"syntax error: {exc.message}") from None
    allowed = set(variables) | set(env.globals)
    for unknown, line in _unknown_names(tree, allowed):
        known = ", ".join(sorted(variables)) or "none"
        raise TemplateError(
            path, line, f"unknown variable '{unknown}' (this template gets: {known})"
        )
    try:
        template = env.get_template(name)
    except jinja2.TemplateError as exc:
        raise TemplateError(path, getattr(exc, "lineno", None), str(exc)) from None
    compiled = CompiledTemplate(path, template)
    compiled.render(sample)
    return compiled


def _unknown_names(tree: nodes.Template, allowed: set[str]) -> list[tuple[str, int]]:
    """Names read before any assignment in the template that are not ``allowed``, with lines."""
    from jinja2 import meta

    undeclared = meta.find_undeclared_variables(tree) - allowed
    found: list[tuple[str, int]] = []
    for name in sorted(undeclared):
        lines = [n.lineno for n in tree.find_all(nodes.Name) if n.name == name and n.ctx == "load"]
        found.append((name, min(lines) if lines else 1))
    return sorted(found, key=lambda item: item[1])


def _template_line(exc: BaseException, path: Path) -> int | None:
    """The template line an error was raised from (Jinja maps its frames to template lines)."""
    line: int | None = getattr(exc, "lineno", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return line
