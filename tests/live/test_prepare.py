"""Preparing the packaged SmolLM2 for real: GGUF -> bf16 safetensors folder, verified.

Conversions run through `gateway models prepare` in a process of their own, as users run it:
libraries other tests import in this process (peft, sentence-transformers) change
transformers' global state, and a verified conversion must not depend on that.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import transformers
from rich.console import Console

from gateway.engines.packaged import MARKER_NAME, PACKAGED_MODELS, is_prepared, prepare_model

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"


@dataclass
class Prepared:
    models_dir: Path
    folder: Path
    seconds: float
    output: str


def prepare_cli(home: Path, *flags: str) -> str:
    """`gateway models prepare` in its own process; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "models", "prepare", NAME, *flags],
        env={**os.environ, "GATEWAY_HOME": str(home), "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    home = tmp_path_factory.mktemp("home")
    started = time.monotonic()
    output = prepare_cli(home)
    models_dir = home / "models"
    return Prepared(models_dir, models_dir / NAME, time.monotonic() - started, output)


def test_prepared_folder_is_a_plain_hf_model(prepared: Prepared) -> None:
    folder = prepared.folder
    assert folder == prepared.models_dir / NAME
    assert is_prepared(prepared.models_dir, NAME)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    weights = list(folder.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) > 200_000_000
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    # Only the finished folder and the lock file remain: no temporary siblings.
    assert sorted(p.name for p in prepared.models_dir.iterdir()) == [f".{NAME}.lock", NAME]
    assert "Prepared smollm2-135m-instruct" in prepared.output


def test_marker_describes_the_source(prepared: Prepared) -> None:
    marker = json.loads((prepared.folder / MARKER_NAME).read_text())
    spec = PACKAGED_MODELS[NAME]
    found = importlib.util.find_spec(spec.package)
    assert found is not None and found.submodule_search_locations
    gguf = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    assert marker["source_gguf"] == spec.gguf_file
    assert marker["source_size"] == gguf.stat().st_size
    assert marker["transformers_version"] == transformers.__version__
    assert marker["dtype"] == "bfloat16"
    assert marker["created"]
    assert marker["verify_reply"].strip()
    # Written last: no file in the folder is newer than the marker.
    marker_mtime = (prepared.folder / MARKER_NAME).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker_mtime for p in prepared.folder.iterdir())


def test_second_call_returns_at_once(prepared: Prepared) -> None:
    marker = prepared.folder / MARKER_NAME
    before = marker.stat().st_mtime_ns
    out = io.StringIO()
    started = time.monotonic()
    assert prepare_model(prepared.models_dir, NAME, console=Console(file=out)) == prepared.folder
    assert time.monotonic() - started < 1.0
    assert marker.stat().st_mtime_ns == before
    assert out.getvalue() == ""


def test_force_converts_again(prepared: Prepared) -> None:
    marker = prepared.folder / MARKER_NAME
    before = marker.stat().st_mtime_ns
    created = json.loads(marker.read_text())["created"]
    time.sleep(1.1)  # `created` has a resolution of one second
    output = prepare_cli(prepared.models_dir.parent, "--force")
    assert f"prepared: {prepared.folder}" in output.replace("\n", "")
    assert marker.stat().st_mtime_ns > before
    assert json.loads(marker.read_text())["created"] > created
    assert "Prepared smollm2-135m-instruct" in output
    assert sorted(p.name for p in prepared.models_dir.iterdir()) == [f".{NAME}.lock", NAME]
