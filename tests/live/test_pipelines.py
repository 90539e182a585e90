"""Pipelines on the real gateway and the real vLLM, through the official openai client.

Kept to a handful of short requests: each medprompt request is five members (plus a short
constrained follow-up for a member whose reasoning names no letter) on a 135M model on the CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.datasets import split_of
from gateway.pipelines.loader import shipped_prompts_dir
from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow

QUESTION = "Which of the following is the main function of red blood cells?"
OPTIONS = {
    "A": "Fighting infection",
    "B": "Carrying oxygen",
    "C": "Clotting blood",
    "D": "Producing hormones",
}
ASK: list[Any] = [
    {
        "role": "user",
        "content": QUESTION + "\n" + "\n".join(f"({k}) {v}" for k, v in OPTIONS.items()),
    }
]


def test_medprompt_returns_a_voted_letter_through_the_openai_client(
    client: openai.OpenAI,
) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=48,
        extra_body={"switchboard": {"pipeline": "medprompt"}},
    )
    ext = (result.model_extra or {})["switchboard"]
    assert ext["pipeline"] == "medprompt"
    assert ext["answer"] in OPTIONS
    assert set(ext["votes"]) == set(OPTIONS) and sum(ext["votes"].values()) == 5
    assert ext["votes"][ext["answer"]] == max(ext["votes"].values())
    assert ext["confidence"] == pytest.approx(ext["votes"][ext["answer"]] / 5, abs=1e-3)
    assert len(ext["members"]) == 5 and 5 <= ext["calls"] <= 10
    assert len(ext["exemplars"]) == 5 and all(split_of(i) == "train" for i in ext["exemplars"])
    content = result.choices[0].message.content or ""
    assert content.rstrip().endswith(ext["answer"]) or ext["answer"] in content
    assert result.usage is not None and result.usage.prompt_tokens > 5 * 200


def test_medprompt_stream_sends_the_assembled_answer(gateway_server: RunningGateway) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "see the extension"}],
        "max_tokens": 32,
        "stream": True,
        "switchboard": {"pipeline": "medprompt", "question": QUESTION, "options": OPTIONS},
    }
    with httpx.stream(
        "POST", f"{gateway_server.url}/v1/chat/completions", json=body, timeout=300
    ) as resp:
        assert resp.status_code == 200
        text = "".join(resp.iter_text())
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert sum(final["switchboard"]["votes"].values()) == 5
    assert final["switchboard"]["answer"] in OPTIONS


def test_cot_with_structured_options_on_the_real_model(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Answer the question."}],
        max_tokens=32,
        extra_body={"switchboard": {"pipeline": "cot", "question": QUESTION, "options": OPTIONS}},
    )
    ext = (result.model_extra or {})["switchboard"]
    assert ext["answer"] in OPTIONS and sum(ext["votes"].values()) == 1


def test_exemplars_build_cli_against_the_running_gateway(
    gateway_server: RunningGateway, tmp_path: Path
) -> None:
    """`gateway exemplars build --url`: keeps only replies that reach the gold, writes a bank."""
    shipped = shipped_prompts_dir()
    assert shipped is not None
    shutil.copytree(shipped / "medprompt", tmp_path / "pipes" / "medprompt")
    for name in ("exemplars.jsonl", "exemplars.npy", "exemplars.meta.json"):
        (tmp_path / "pipes" / "medprompt" / name).unlink()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "models:\n  smollm2: {engine: vllm, urls: ['http://127.0.0.1:9']}\n"
        "pipelines:\n  folders: [pipes]\n"
    )
    data = tmp_path / "train.jsonl"
    shutil.copy(shipped / "medprompt" / "exemplars.jsonl", data)
    # A held-out item in the data must be skipped, never written to the bank.
    items = [json.loads(line) for line in data.read_text().splitlines()][:6]
    probe = 0
    while split_of(f"probe-{probe}") != "heldout":
        probe += 1
    heldout = {"id": f"probe-{probe}", "question": "Q?", "options": {"A": "x", "B": "y"}}
    heldout["answer"] = "A"
    data.write_text("".join(json.dumps(i) + "\n" for i in [heldout, *items]))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "exemplars", "build", "--pipeline", "medprompt",
         "--model", "smollm2", "--data", str(data), "--concurrency", "6",
         "--url", gateway_server.url, "--config", str(config)],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "skipping 1 held-out items" in out
    folder = tmp_path / "pipes" / "medprompt"
    if proc.returncode == 0:
        kept = [json.loads(line) for line in (folder / "exemplars.jsonl").read_text().splitlines()]
        assert f"kept {len(kept)} of 6 training questions" in " ".join(out.split())
        assert all(
            e["answer"] == next(i for i in items if i["id"] == e["id"])["answer"] for e in kept
        )
        meta = json.loads((folder / "exemplars.meta.json").read_text())
        assert meta["total"] == 6 and meta["skipped_heldout"] == 1 and meta["kept"] == len(kept)
    else:
        # The small model may reach the gold on none of six questions; that is reported.
        assert proc.returncode == 1 and "nothing to write" in out, out
