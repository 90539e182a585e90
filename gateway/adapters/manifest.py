"""One adapter folder: the manifest (``adapter.yaml``) and the peft files beside it.

``read_adapter`` reads a folder on its own and reports what vLLM would refuse (DoRA, bias,
``modules_to_save``) and where the manifest and the weights disagree; ``adapters.py`` checks it
against a config and keeps the registry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import AdapterProblems

MANIFEST = "adapter.yaml"
PEFT_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class _Manifest(BaseModel):
    # Unknown keys are errors: a misspelt key must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataFingerprint(_Manifest):
    file: str = Field(description="the data file as given to the training command")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=1, description="examples trained and validated on")
    format: str = Field(default="chat", description="'chat' or 'mc' (converted to chat)")


class TrainingRecord(_Manifest):
    """How the weights were made; written by ``gateway adapters train``."""

    command: str
    base_source: str = Field(description="what the base weights were: 'packaged:...', a hub id")
    data: DataFingerprint
    train_rows: int = Field(ge=1)
    val_rows: int = Field(ge=0)
    epochs: float
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float
    seed: int
    max_length: int
    dropout: float
    train_loss: float | None = None
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    duration_s: float
    device: str
    versions: dict[str, str] = Field(default_factory=dict)


class AdapterManifest(_Manifest):
    name: str
    base_model: str = Field(description="a model id under `models:` in gateway.yaml")
    description: str = ""
    rank: int = Field(ge=1)
    alpha: int = Field(ge=1)
    target_modules: list[str] = Field(min_length=1)
    weights: str = Field(
        default=".",
        description="the folder with the peft files, relative to the adapter's folder",
    )
    created: str
    training: TrainingRecord | None = None
    evaluation: dict[str, Any] | None = None
    #: written by `gateway adapters distill`: teacher, filter, counts kept and dropped, data hash
    distillation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Adapter:
    name: str
    #: ``<registry folder>/<name>``, resolved
    folder: Path
    manifest: AdapterManifest
    #: the folder vLLM loads (``weights`` resolved); its peft files were checked
    weights_dir: Path

    @property
    def base_model(self) -> str:
        return self.manifest.base_model

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST


def read_adapter(folder: Path) -> Adapter:
    """Read and check one adapter folder on its own (no config needed)."""
    name = folder.name
    manifest_path = folder / MANIFEST
    where = str(manifest_path)
    try:
        data = yaml.safe_load(manifest_path.read_text("utf-8"))
    except FileNotFoundError:
        raise AdapterProblems(
            [f"{where}: missing. Fix: write the manifest (`gateway adapters train` does)."]
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise AdapterProblems([f"{where}: cannot read: {exc}"]) from None
    if not isinstance(data, Mapping):
        raise AdapterProblems([f"{where}: the manifest must be a mapping."])
    try:
        manifest = AdapterManifest.model_validate(data)
    except ValidationError as exc:
        raise AdapterProblems([_describe(where, err) for err in exc.errors()]) from None
    problems: list[str] = []
    if manifest.name != name:
        problems.append(
            f"{where}: name: '{manifest.name}' differs from its folder '{name}'. "
            "Fix: make them equal (the folder name is what clients call)."
        )
    weights = Path(manifest.weights).expanduser()
    weights_dir = (weights if weights.is_absolute() else folder / weights).resolve()
    problems += _peft_problems(manifest, weights_dir, where)
    if problems:
        raise AdapterProblems(problems)
    return Adapter(name=name, folder=folder, manifest=manifest, weights_dir=weights_dir)


def _describe(where: str, err: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: {key}: unknown key. Fix: remove it or check its spelling."
    if err["type"] == "missing":
        return f"{where}: {key}: required key is missing. Fix: add it."
    return f"{where}: {key}: {str(err['msg']).removeprefix('Value error, ')}."


def _peft_problems(manifest: AdapterManifest, weights_dir: Path, where: str) -> list[str]:
    """What vLLM would refuse, found before it is asked (vLLM: no DoRA, bias, extra modules)."""
    config_path = weights_dir / PEFT_CONFIG
    try:
        peft = json.loads(config_path.read_text("utf-8"))
    except FileNotFoundError:
        return [
            f"{where}: weights: {config_path} is missing. Fix: point 'weights' at the folder "
            "that `save_pretrained` wrote."
        ]
    except (OSError, ValueError) as exc:
        return [f"{config_path}: cannot read: {exc}"]
    if not isinstance(peft, dict):
        return [f"{config_path}: expected a JSON object."]
    problems: list[str] = []
    if not any((weights_dir / f).is_file() for f in WEIGHT_FILES):
        problems.append(
            f"{where}: weights: no {' or '.join(WEIGHT_FILES)} in {weights_dir}. "
            "Fix: copy the adapter's weights there."
        )
    if peft.get("peft_type", "LORA") != "LORA":
        problems.append(f"{config_path}: peft_type is {peft.get('peft_type')}; vLLM serves LORA.")
    if peft.get("use_dora"):
        problems.append(f"{config_path}: use_dora: vLLM cannot serve DoRA. Fix: retrain without.")
    if peft.get("modules_to_save"):
        problems.append(
            f"{config_path}: modules_to_save: vLLM cannot serve adapters that replace whole "
            "modules. Fix: retrain with modules_to_save unset."
        )
    if peft.get("bias", "none") != "none":
        problems.append(
            f"{config_path}: bias is '{peft.get('bias')}'; vLLM needs 'none'. Fix: retrain "
            "with bias='none'."
        )
    for key, value in (("r", manifest.rank), ("lora_alpha", manifest.alpha)):
        if peft.get(key) != value:
            problems.append(
                f"{where}: {'rank' if key == 'r' else 'alpha'}: {value} but {config_path} has "
                f"{key}={peft.get(key)}. Fix: make the manifest match the weights."
            )
    if peft.get("rank_pattern") or peft.get("alpha_pattern"):
        problems.append(
            f"{config_path}: rank_pattern/alpha_pattern: per-module ranks are not checked "
            "against vLLM's --max-lora-rank. Fix: train with one rank."
        )
    return problems


# -- writing ---------------------------------------------------------------------------------


def write_adapter(
    out: Path, manifest: AdapterManifest, save: Callable[[str], None], *, force: bool
) -> None:
    """Save the weights and the manifest under a hidden name, then rename into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save(str(work))
        _clean_peft_files(work, manifest)
        text = yaml.safe_dump(
            manifest.model_dump(mode="json", exclude_none=True), sort_keys=False, width=100
        )
        (work / MANIFEST).write_text(text, encoding="utf-8")
        work.chmod(0o755)
        if out.exists():
            if not force:
                raise FileExistsError(f"{out} appeared meanwhile; nothing written")
            old = out.with_name(f".{out.name}.old-{work.name[-8:]}")
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _clean_peft_files(folder: Path, manifest: AdapterManifest) -> None:
    """No machine paths in what gets shared: peft records the local base folder."""
    config_path = folder / PEFT_CONFIG
    config = json.loads(config_path.read_text("utf-8"))
    training = manifest.training
    config["base_model_name_or_path"] = training.base_source if training else manifest.base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    # peft's model card template repeats the local path; the manifest describes the adapter.
    (folder / "README.md").unlink(missing_ok=True)
    for path in folder.iterdir():
        path.chmod(0o644)
