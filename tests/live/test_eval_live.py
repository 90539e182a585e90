"""`gateway eval` on the real vLLM: a small paired run, its reports, Ctrl-C and the rerun.

Kept tiny for CI: three or four held-out MMLU questions, two variants (the plain pipeline and
chain of thought) with short completions, on the shared vLLM of the session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.datasets import import_mmlu, select, write_items
from gateway.engines.supervisor import free_port
from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow


@pytest.fixture
def study(vllm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A config on the shared vLLM, four held-out questions, and a private GATEWAY_HOME."""
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path / "home"))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
models:
  base:
    engine: vllm
    urls: ["{vllm_url}"]
    upstream_model: smollm2
    pricing: {{prompt_per_1m: 0.1, completion_per_1m: 0.4}}
routes:
  quiz:
    variants:
      plain:
        {{target: base, pipeline: plain, weight: 50, params: {{temperature: 0, max_tokens: 8}}}}
      cot: {{target: base, pipeline: cot, weight: 50, params: {{temperature: 0, max_tokens: 24}}}}
"""
    )
    items = list(select(import_mmlu(), "heldout"))[:4]
    data = tmp_path / "heldout.jsonl"
    write_items(items, data)
    return config, data


def test_eval_compares_two_variants_and_the_report_shows_the_run(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    config, data = study
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["eval", "--config", str(config), "--data", str(data), "--route", "quiz"]
    result = runner.invoke(app, [*args, "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["items"] == 3 and report["chance"] == 0.25
    for name in ("plain", "cot"):
        figures = report["variants"][name]
        assert figures["n"] == 3 and figures["errors"] == 0
        low, high = figures["accuracy"]["ci95"]
        assert low <= figures["accuracy"]["mean"] <= high
        assert sum(figures["answers"].values()) == 3
        assert figures["prompt_tokens"] > 30 and figures["completion_tokens"] > 0
        assert figures["cost"]["per_request"] > 0 and figures["latency_ms"]["p50"] > 0
    assert report["variants"]["plain"]["calls"] == 1
    assert report["variants"]["plain"]["completion_tokens"] <= 8
    # cot writes its own prompt: longer than the plain question.
    assert report["variants"]["cot"]["prompt_tokens"] > report["variants"]["plain"]["prompt_tokens"]
    [pair] = report["comparisons"]
    assert pair["n"] == 3 and sum(pair["table"].values()) == 3
    page = (out / "report.html").read_text()
    # Accuracy, cost, latency and answers; a reliability diagram when a variant had votes
    # (cot's one vote per answer that names a letter).
    voted = any(f["calibration"]["n"] for f in report["variants"].values())
    assert ("Calibration (reliability diagram)" in page) == voted
    assert page.count("<svg") == 4 + voted and "<script" not in page and "http" not in page
    records = [json.loads(x) for x in (out / "results" / "cot.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["inference_id"].startswith("inf-") for r in records)

    logged = runner.invoke(
        app, ["report", "--config", str(config), "--route", "quiz", "--format", "json"]
    )
    assert logged.exit_code == 0, logged.output
    [online] = json.loads(logged.output)
    [run] = online["offline"]
    assert run["run_id"] == report["run_id"]
    assert {n: v["n"] for n, v in run["variants"].items()} == {"plain": 3, "cot": 3}
    for name in ("plain", "cot"):
        assert (
            run["variants"][name]["accuracy"]["mean"]
            == report["variants"][name]["accuracy"]["mean"]
        )
    assert online["variants"]["plain"]["n"] == 0  # offline calls are not live traffic

    # A finished run only writes its report again: with the engine gone, nothing is called.
    dead = config.read_text().replace(_engine_url(config), f"http://127.0.0.1:{free_port()}")
    config.write_text(dead)
    again = runner.invoke(app, [*args, "--limit", "3", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["variants"] == report["variants"]


def _engine_url(config: Path) -> str:
    return config.read_text().split('urls: ["', 1)[1].split('"', 1)[0]


def test_ctrl_c_leaves_a_valid_partial_result_and_the_rerun_finishes(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    config, data = study
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "gateway",
        "eval",
        "--config",
        str(config),
        "--data",
        str(data),
        "--route",
        "quiz",
        "--concurrency",
        "1",
        "--out",
        str(out),
    ]
    log = tmp_path / "eval.log"
    with log.open("wb") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ)
    first = out / "results" / "plain.jsonl"
    deadline = time.monotonic() + 180
    while not (first.exists() and first.read_text().strip()) and time.monotonic() < deadline:
        assert child.poll() is None, log.read_text()
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    assert child.wait(120) == 130, log.read_text()
    partial = json.loads((out / "report.json").read_text())
    assert partial["complete"] is False, log.read_text()
    done_before = sum(v["n"] for v in partial["variants"].values())
    assert 1 <= done_before < 8

    rerun = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    final = json.loads((out / "report.json").read_text())
    assert final["complete"] and final["run_id"] == partial["run_id"]
    for name in ("plain", "cot"):
        lines = (out / "results" / f"{name}.jsonl").read_text().splitlines()
        ids = [json.loads(line)["item"] for line in lines]
        # Every item once: the rerun ran only what the interrupted run had not finished.
        assert len(ids) == len(set(ids)) == 4


def test_eval_with_url_on_the_served_embedded_default(
    gateway_server: RunningGateway, tmp_path: Path
) -> None:
    """`--url` against `gateway serve`: the embedded medqa route's adapter variant, two items."""
    data = tmp_path / "heldout.jsonl"
    write_items(list(select(import_mmlu(), "heldout"))[:2], data)
    out = tmp_path / "run"
    args = ["eval", "--url", gateway_server.url, "--data", str(data), "--route", "medqa"]
    result = CliRunner().invoke(app, [*args, "--variants", "tuned", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    tuned = report["variants"]["tuned"]
    assert report["gateway"] == gateway_server.url and tuned["n"] == 2 and tuned["errors"] == 0
    assert sum(tuned["answers"].values()) == 2 and tuned["calls"] == 1
    served = httpx.get(f"{gateway_server.url}/v1/experiments/medqa", timeout=30).json()
    [run] = [r for r in served["offline"] if r["run_id"] == report["run_id"]]
    assert run["variants"]["tuned"]["n"] == 2
    assert run["variants"]["tuned"]["accuracy"]["mean"] == tuned["accuracy"]["mean"]
