"""Scoring one reply against its label.

Five scorers, chosen in the data file's header line or with ``gateway eval --scorer``:

- ``mc`` (the default for multiple-choice data): the answer letter the pipeline extracted
  equals the gold letter. Where a pipeline extracted nothing, the reply is read with the
  pipelines' own answer extraction, so offline and online read letters the same way.
- ``exact``: the whole reply, whitespace collapsed (and case folded unless ``case_sensitive``),
  equals the expected text.
- ``regex``: the last match of ``pattern`` in the reply (its first group if it has one) equals
  the expected text, compared as ``exact`` compares.
- ``json``: the reply parsed as JSON (a code fence or text around one object is tolerated);
  the value at ``field`` (a dotted path, list indices as numbers) equals the expected value.
- ``numeric``: the last number in the reply is within ``tolerance`` of the expected number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.errors import ScorerError
from gateway.pipelines.answers import extract_answer

ScorerKind = Literal["mc", "exact", "regex", "json", "numeric"]
KINDS: tuple[ScorerKind, ...] = ("mc", "exact", "regex", "json", "numeric")
_HEADER_KEYS = frozenset({"scorer", "pattern", "field", "tolerance", "case_sensitive"})
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class ScorerSpec:
    kind: ScorerKind = "mc"
    pattern: str | None = None
    field: str | None = None
    tolerance: float = 0.0
    case_sensitive: bool = False

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this kind (stored with a run, compared on resume)."""
        data = asdict(self)
        keep = {
            "mc": (),
            "exact": ("case_sensitive",),
            "regex": ("pattern", "case_sensitive"),
            "json": ("field", "case_sensitive"),
            "numeric": ("tolerance",),
        }[self.kind]
        return {"kind": self.kind, **{k: data[k] for k in keep}}


@dataclass(frozen=True)
class Score:
    #: what was read from the reply (a letter, a string, a number as text); None if nothing
    answer: str | None
    correct: bool


def parse_cli(text: str) -> ScorerSpec:
    """``--scorer KIND[:ARG]``: ``mc``, ``exact``, ``exact:case``, ``regex:PATTERN``,
    ``json:FIELD``, ``numeric:TOLERANCE``."""
    kind, _, arg = text.partition(":")
    where = f"--scorer {text}"
    if kind == "mc" and not arg:
        return ScorerSpec("mc")
    if kind == "exact" and arg in ("", "case"):
        return ScorerSpec("exact", case_sensitive=arg == "case")
    if kind == "regex" and arg:
        return checked(ScorerSpec("regex", pattern=arg), where)
    if kind == "json" and arg:
        return checked(ScorerSpec("json", field=arg), where)
    if kind == "numeric":
        try:
            tolerance = float(arg or 0)
        except ValueError:
            raise ScorerError(f"{where}: the tolerance '{arg}' is not a number") from None
        return checked(ScorerSpec("numeric", tolerance=tolerance), where)
    raise ScorerError(
        f"{where}: use mc, exact, exact:case, regex:PATTERN, json:FIELD or numeric:TOLERANCE"
    )


def from_header(data: Mapping[str, Any], where: str) -> ScorerSpec:
    """A header line such as ``{"scorer": "regex", "pattern": "Answer: (\\\\d+)"}``."""
    unknown = set(data) - _HEADER_KEYS
    if unknown:
        raise ScorerError(
            f"{where}: unknown header keys {', '.join(sorted(unknown))}; "
            f"a header may hold {', '.join(sorted(_HEADER_KEYS))}"
        )
    kind = data.get("scorer")
    if kind not in KINDS:
        raise ScorerError(f"{where}: 'scorer' is {json.dumps(kind)}; use one of {', '.join(KINDS)}")
    tolerance = data.get("tolerance", 0.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise ScorerError(f"{where}: 'tolerance' must be a number")
    case_sensitive = data.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        raise ScorerError(f"{where}: 'case_sensitive' must be true or false")
    for key in ("pattern", "field"):
        if key in data and not isinstance(data[key], str):
            raise ScorerError(f"{where}: '{key}' must be a string")
    spec = ScorerSpec(
        kind=kind,
        pattern=data.get("pattern"),
        field=data.get("field"),
        tolerance=float(tolerance),
        case_sensitive=case_sensitive,
    )
    return checked(spec, where)


def checked(spec: ScorerSpec, where: str) -> ScorerSpec:
    if spec.kind == "regex":
        if not spec.pattern:
            raise ScorerError(f"{where}: the regex scorer needs a 'pattern'")
        try:
            compiled = re.compile(spec.pattern)
        except re.error as exc:
            raise ScorerError(f"{where}: the pattern is not a valid regex ({exc})") from None
        if compiled.groups > 1:
            raise ScorerError(f"{where}: the pattern may have at most one group (the answer)")
    if spec.kind == "json" and not spec.field:
        raise ScorerError(f"{where}: the json scorer needs a 'field' (a dotted path)")
    if spec.kind == "numeric" and (spec.tolerance < 0 or not math.isfinite(spec.tolerance)):
        raise ScorerError(f"{where}: 'tolerance' must be a finite number >= 0")
    return spec


def check_expected(spec: ScorerSpec, expected: Any, where: str) -> None:
    """Refuse a label the scorer could never match, naming the data line."""
    if spec.kind == "numeric" and _as_number(expected) is None:
        raise ScorerError(f"{where}: 'expected' is {json.dumps(expected)}, not a number")
    if spec.kind in ("exact", "regex") and not isinstance(expected, str | int | float):
        raise ScorerError(f"{where}: 'expected' must be a string or a number for {spec.kind}")


def score(
    spec: ScorerSpec,
    reply: str,
    expected: Any,
    *,
    extracted: str | None = None,
    options: Mapping[str, str] | None = None,
) -> Score:
    """Score one reply. ``extracted`` is the pipeline's answer letter, ``options`` the item's."""
    if spec.kind == "mc":
        letter = extracted
        if letter is None and options:
            found = extract_answer(reply, options)
            letter = found.letter if found else None
        return Score(letter, letter is not None and letter == expected)
    if spec.kind == "exact":
        answer = reply.strip()
        return Score(answer or None, _same_text(answer, expected, spec.case_sensitive))
    if spec.kind == "regex":
        assert spec.pattern is not None
        matches = list(re.finditer(spec.pattern, reply))
        if not matches:
            return Score(None, False)
        last = matches[-1]
        answer = last.group(1) if last.re.groups else last.group(0)
        answer = answer or ""
        return Score(answer, _same_text(answer, expected, spec.case_sensitive))
    if spec.kind == "json":
        assert spec.field is not None
        value = _field(_json_value(reply), spec.field)
        if value is _MISSING:
            return Score(None, False)
        shown = value if isinstance(value, str) else json.dumps(value)
        if isinstance(value, str) and isinstance(expected, str):
            return Score(shown, _same_text(value, expected, spec.case_sensitive))
        return Score(shown, _same_value(value, expected))
    numbers = _NUMBER.findall(reply)
    number = _as_number(numbers[-1]) if numbers else None
    target = _as_number(expected)
    if number is None or target is None:
        return Score(None, False)
    # A small relative slack so that 0.1 + 0.2 == 0.3 holds with tolerance 0.
    ok = abs(number - target) <= spec.tolerance + 1e-9 * max(1.0, abs(target))
    return Score(_format_number(number), ok)


# -- helpers ------------------------------------------------------------------------------------


class _Missing:
    pass


_MISSING: Any = _Missing()


def _normalise(text: str, case_sensitive: bool) -> str:
    collapsed = " ".join(text.split())
    return collapsed if case_sensitive else collapsed.casefold()


def _same_text(answer: str, expected: Any, case_sensitive: bool) -> bool:
    want = expected if isinstance(expected, str) else json.dumps(expected)
    return _normalise(answer, case_sensitive) == _normalise(want, case_sensitive)


def _same_value(value: Any, expected: Any) -> bool:
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    if isinstance(value, int | float) and isinstance(expected, int | float):
        return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)
    return bool(value == expected)


def _json_value(reply: str) -> Any:
    candidates = [reply.strip()]
    candidates += [m.strip() for m in _FENCE.findall(reply)]
    start, end = reply.find("{"), reply.rfind("}")
    if 0 <= start < end:
        candidates.append(reply[start : end + 1])
    for text in candidates:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue
    return _MISSING


def _field(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.replace(",", "").strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _format_number(number: float) -> str:
    return str(int(number)) if number.is_integer() else repr(number)
