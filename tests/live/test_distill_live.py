"""Closing the loop on the real vLLM (#15): capture and redaction, export, distillation into a
student that loads and answers, and cascades that escalate below their threshold only.

An in-process gateway on the session's vLLM (``vllm_url``) serves one route: the demo adapter
(``tuned``, plain), a small MedPrompt teacher (``prompted``, 16 tokens a member) and cascades of
the two at several thresholds. The commands (``gateway datasets export``, ``gateway adapters
distill --from-capture``) run as subprocesses on the same home.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.adapters import distill as d
from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.evaluation.backends import InProcessBackend
from gateway.settings import Settings
from gateway.state import GatewayState

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PHONE = "555-867-5309"
QUESTIONS = [
    ("Which organ secretes insulin?", ["Liver", "Pancreas", "Kidney", "Spleen"]),
    ("Which vessel leaves the left ventricle?", ["Aorta", "Vena cava", "Portal vein", "Vein"]),
    ("Which bone is the longest in the human body?", ["Tibia", "Humerus", "Femur", "Radius"]),
    ("Which deficiency causes scurvy?", ["Vitamin A", "Vitamin C", "Vitamin D", "Vitamin K"]),
]
THRESHOLDS = {"never": 0.0, "half": 0.5, "sure": 0.99}


def routes(models: str) -> str:
    cascades = "\n".join(
        f"      {name}: {{cascade: [{{variant: tuned, accept: {{answer_prob: {t}}}}}, "
        "{variant: prompted}]}"
        for name, t in THRESHOLDS.items()
    )
    return f"""
models:
{models}
adapters:
  folders: ["{REPO / "adapters"}", adapters]
routes:
  medqa:
    allow_pin: true
    capture: {{sample_rate: 1, retention_days: 30, redact: ['\\d{{3}}-\\d{{3}}-\\d{{4}}']}}
    variants:
      tuned: {{target: mmlu-med-demo, weight: 1, params: {{temperature: 0, max_tokens: 8}}}}
      prompted: {{target: smollm2, pipeline: medprompt, params: {{max_tokens: 16}}}}
{cascades}
"""


PRICING = "pricing: {prompt_per_1m: 0.1, completion_per_1m: 0.4}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("distill-home")
    (folder / "models").symlink_to(Settings().models_dir, target_is_directory=True)
    (folder / "adapters").mkdir()
    # What the commands read: the same route, with the base as the packaged model (its weights
    # are what a student trains on; nothing here starts it).
    launch = (
        "  smollm2: {engine: vllm, "
        + PRICING
        + ", launch: {model: 'packaged:smollm2-135m-instruct',"
        " args: [--enable-lora, --max-lora-rank=8, --max-loras=2]}}"
    )
    (folder / "gateway.yaml").write_text(routes(launch))
    return folder


@pytest.fixture
async def gateway(
    vllm_url: str, home: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayState]]:
    models = (
        f'  smollm2: {{engine: vllm, urls: ["{vllm_url}"], upstream_model: smollm2, {PRICING}}}'
    )
    config = parse_config(routes(models), str(home / "live.yaml"))
    config._base_dir = home  # its 'adapters' folder is the home's
    app = create_app(config, Settings(home=home))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=600) as raw:
            yield raw, app.state.gateway


def _question(index: int, extra: str = "") -> dict[str, Any]:
    text, options = QUESTIONS[index]
    lettered = dict(zip("ABCD", options, strict=True))
    lines = "\n".join(f"{k}. {v}" for k, v in lettered.items())
    return {
        "model": "medqa",
        "messages": [{"role": "user", "content": f"{text}{extra}\n\n{lines}"}],
        "switchboard": {"question": text, "options": lettered},
    }


async def _ask(raw: httpx.AsyncClient, variant: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await raw.post(
        "/v1/chat/completions", json=body, headers={"x-switchboard-variant": variant}
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def _database_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.glob("events.db*"))


def _gateway_command(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_HOME": str(home)}
    command = [sys.executable, "-m", "gateway", *args, "--config", str(home / "gateway.yaml")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=home)


async def test_capture_redacts_before_the_database(
    gateway: tuple[httpx.AsyncClient, GatewayState], home: Path
) -> None:
    raw, state = gateway
    body = _question(0, extra=f" (call me on {PHONE})")
    reply = await _ask(raw, "tuned", body)
    await state.events.flush()
    rows = state.events.store.captures("medqa")
    mine = [r for r in rows if r["id"] == reply["switchboard"]["inference_id"]]
    assert mine and "[REDACTED]" in mine[0]["messages"][0]["content"]
    assert mine[0]["response"] == reply["choices"][0]["message"]["content"]
    assert PHONE.encode() not in _database_bytes(home)
    with sqlite3.connect(home / "events.db") as db:
        texts = [r[0] for r in db.execute("SELECT messages FROM captures")]
    assert texts and all(PHONE not in t for t in texts)


async def test_cascades_escalate_below_their_threshold_only(
    gateway: tuple[httpx.AsyncClient, GatewayState],
) -> None:
    raw, state = gateway
    escalated: list[bool] = []
    for name, threshold in THRESHOLDS.items():
        for index in range(2):
            reply = await _ask(raw, name, _question(index))
            cascade = reply["switchboard"]["cascade"]
            first = cascade["steps"][0]
            below = first["confidence"] is None or first["confidence"] < threshold
            assert cascade["escalated"] is below, (name, cascade)
            escalated.append(below)
            await state.events.flush()
            event = state.events.store.get_event(reply["switchboard"]["inference_id"])
            assert event is not None and event["pipeline"] == "cascade"
            assert event["cascade_step"] == len(event["steps"]) - 1 == int(below)
            # Every step's calls, tokens and cost, and the event's totals are their sums.
            assert event["calls"] == sum(s["calls"] for s in event["steps"])
            assert event["cost"] == pytest.approx(sum(s["cost"] for s in event["steps"]))
            tokens = sum(s["prompt_tokens"] + s["completion_tokens"] for s in event["steps"])
            assert event["prompt_tokens"] + event["completion_tokens"] == tokens
    assert not escalated[0] and not escalated[1]  # threshold 0: the adapter always answers
    assert any(escalated), "no step fell below 0.99: the sweep shows nothing"


async def test_export_and_distil_a_student_that_loads_and_answers(
    gateway: tuple[httpx.AsyncClient, GatewayState], home: Path
) -> None:
    raw, state = gateway
    # The teacher by the live code path (the evaluation backend), answers cached beside --out.
    questions = [
        d.Question(f"q{i}", q, dict(zip("ABCD", o, strict=True)))
        for i, (q, o) in enumerate(QUESTIONS)
    ]
    out = home / "adapters" / "student"
    answers = await d.ask_teacher(
        InProcessBackend(state), "medqa:prompted", questions, d.cache_path(out)
    )
    assert len(answers) == len(QUESTIONS) and all(a.votes for a in answers.values())
    await state.events.flush()

    exported = home / "prompted.jsonl"
    done = _gateway_command(
        home, "datasets", "export", "--route", "medqa", "--variant", "prompted",
        "--out", str(exported),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    lineage = json.loads((home / "prompted.lineage.json").read_text())
    assert len(lines) == len(lineage["inference_ids"]) == len(QUESTIONS)
    assert lineage["filter"]["variant"] == "prompted"
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)

    done = _gateway_command(
        home, "adapters", "distill", "--from-capture", "medqa", "--teacher", "medqa:prompted",
        "--min-confidence", "0.2", "--base", "smollm2", "--out", str(out),
        "--max-steps", "3", "--batch-size", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    manifest = yaml.safe_load((out / "adapter.yaml").read_text())
    lineage = manifest["distillation"]
    assert lineage["teacher"] == "medqa:prompted" and lineage["gold_labels_read"] is False
    assert lineage["kept"] + sum(lineage["dropped"].values()) == lineage["asked"] >= len(QUESTIONS)
    assert len(lineage["data"]["sha256"]) == 64

    loaded = await raw.post("/v1/adapters/student/load")
    assert loaded.status_code == 200, loaded.text
    resp = await raw.post(
        "/v1/chat/completions",
        json={**_question(2), "model": "student", "max_tokens": 8, "temperature": 0},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]
