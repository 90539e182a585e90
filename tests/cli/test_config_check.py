"""`gateway config check`: what serve would refuse, refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.config.test_resolve import BROKEN


def check(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env={"GATEWAY_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        check=False,
        timeout=120,
    )


def test_unknown_model_pipeline_and_fallback_exit_2_naming_each(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    result = check(path, tmp_path / "home")
    assert result.returncode == 2, result.stderr
    for key in (
        "routes.qa.variants.b.target",
        "routes.qa.variants.b.pipeline",
        "routes.qa.fallback[1]",
    ):
        assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_a_good_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text('models:\n  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}\n')
    result = check(path, tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
