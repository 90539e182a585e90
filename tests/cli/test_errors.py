"""The ``gateway`` command turns the error tree into one line and an exit status, in one place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app

BAD = "models: {m: {engine: vllm, url: ['http://127.0.0.1:8000']}}\n"
GOOD = "models: {m: {engine: vllm, urls: ['http://127.0.0.1:9']}}\n"


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_bad_config_is_one_line_naming_the_file_and_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text(BAD)
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert str(bad) in line and "models.m.url: unknown key" in line and "Fix:" in line


def test_a_config_with_several_problems_lists_them_one_a_line(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text(BAD + "nonsense: 1\n")
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    first, *problems = result.stderr.splitlines()
    assert first == f"error: {bad}: invalid configuration" and len(problems) == 2
    assert all(p.startswith("  - ") for p in problems)


def test_a_runtime_failure_is_one_line_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(GOOD)
    blocker = tmp_path / "home"
    blocker.write_text("a file where the gateway's home folder should be")
    monkeypatch.setenv("GATEWAY_HOME", str(blocker))
    result = CliRunner().invoke(app, ["report", "--config", str(config)])
    assert result.exit_code == 1 and result.stdout == ""
    line = one_error_line(result.stderr)  # a StoreError, raised deep in the event store
    assert "cannot open the event database" in line and "Fix:" in line


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text(BAD)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "models.m.url: unknown key" in one_error_line(proc.stderr)
