"""Adapters on the real gateway and the real vLLM: the demo adapter, an adapter trained here and
served without a restart, unloading, eviction within --max-loras, refused names, a restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow

DEMO = "mmlu-med-demo"
TINY = "tiny-test"
QUESTION: list[Any] = [
    {
        "role": "user",
        "content": "Which organ secretes insulin?\n\nA. Liver\nB. Pancreas\nC. Kidney\nD. Spleen"
        "\n\nAnswer with the letter of the correct option.",
    }
]
TINY_DATA = [
    {
        "messages": [
            {"role": "user", "content": f"Say the code word for {thing}."},
            {"role": "assistant", "content": f"The code word for {thing} is zebra."},
        ]
    }
    for thing in ("apples", "boats", "clouds", "doors", "eggs", "forks", "games", "hills")
]


def gateway_cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`gateway ...` as a user runs it, in the shared gateway's home."""
    env = {**os.environ, "GATEWAY_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def vllm_adapters(vllm_url: str) -> set[str]:
    cards = httpx.get(f"{vllm_url}/v1/models", timeout=10).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


def vllm_pid(gateway_server: RunningGateway) -> int | None:
    try:
        return int(str(gateway_server.vllm_runtime["pid"]))
    except (OSError, ValueError, KeyError):
        return None  # between a crash and the restart's runtime file


def adapter_states(gateway_server: RunningGateway) -> dict[str, str]:
    data = httpx.get(f"{gateway_server.url}/v1/adapters", timeout=30).json()["data"]
    return {row["id"]: row["state"] for row in data}


def answer(client: openai.OpenAI, model: str) -> str:
    result = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=24
    )
    return result.choices[0].message.content or ""


@pytest.fixture(scope="module")
def tiny(gateway_server: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained by `gateway adapters train` (a few steps) into the gateway's home."""
    data = tmp_path_factory.mktemp("tiny") / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in TINY_DATA))
    out = gateway_server.home / "adapters" / TINY
    result = gateway_cli(
        gateway_server.home,
        *("adapters", "train", "--base", "smollm2", "--data", str(data), "--out", str(out)),
        *("--max-steps", "3", "--batch-size", "2", "--val-fraction", "0.25", "--lr", "1e-3"),
        *("--threads", "1"),
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in " ".join(result.stdout.split())
    return out


@pytest.fixture
def restore_demo(client: openai.OpenAI) -> Iterator[None]:
    """Tests that evict or unload leave the shared gateway serving the demo adapter."""
    yield
    answer(client, DEMO)


def test_demo_adapter_is_served_beside_its_base(client: openai.OpenAI) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards[DEMO]["parent"] == "smollm2"
    assert cards["smollm2"]["parent"] is None


def test_demo_adapter_answers_differently_from_the_base(client: openai.OpenAI) -> None:
    base, tuned = answer(client, "smollm2"), answer(client, DEMO)
    assert tuned != base
    # what the demo adapter was trained to say, which the base model does not
    assert re.fullmatch(r"Answer: [A-D]", tuned.strip()), tuned
    assert not re.fullmatch(r"Answer: [A-D]", base.strip()), base
    # and it is deterministic at temperature 0
    assert answer(client, DEMO) == tuned


def test_demo_adapter_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=DEMO, messages=QUESTION, temperature=0, max_tokens=24, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == answer(client, DEMO)


def test_trained_adapter_is_served_without_restart(
    gateway_server: RunningGateway, client: openai.OpenAI, vllm_url: str, tiny: Path
) -> None:
    manifest = yaml.safe_load((tiny / "adapter.yaml").read_text())
    assert manifest["name"] == TINY and manifest["base_model"] == "smollm2"
    assert manifest["training"]["steps"] == 3 and manifest["training"]["data"]["rows"] == 8
    assert manifest["training"]["command"].startswith("gateway adapters train --base smollm2")
    assert str(gateway_server.home) not in (tiny / "adapter_config.json").read_text()

    result = gateway_cli(gateway_server.home, "adapters", "load", TINY, "--url", gateway_server.url)
    assert result.returncode == 0, result.stderr
    assert f"{TINY}: loaded" in result.stdout
    assert TINY in vllm_adapters(vllm_url)
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards[TINY]["parent"] == "smollm2" and cards[TINY]["loaded"] is True
    reply = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "Say the code word for apples."}]
    )
    assert reply.choices[0].message.content
    listed = gateway_cli(gateway_server.home, "adapters", "list", "--url", gateway_server.url)
    assert TINY in listed.stdout and DEMO in listed.stdout


def test_unload_then_404(
    gateway_server: RunningGateway, client: openai.OpenAI, vllm_url: str, tiny: Path
) -> None:
    loaded = gateway_cli(gateway_server.home, "adapters", "load", TINY, "--url", gateway_server.url)
    assert loaded.returncode == 0, loaded.stderr
    result = gateway_cli(
        gateway_server.home, "adapters", "unload", TINY, "--url", gateway_server.url
    )
    assert result.returncode == 0, result.stderr
    assert TINY not in vllm_adapters(vllm_url)
    with pytest.raises(openai.NotFoundError) as info:
        answer(client, TINY)
    assert info.value.code == "model_not_found"
    assert TINY not in {m.id for m in client.models.list().data}
    # vLLM itself no longer has it either
    direct = httpx.post(
        f"{vllm_url}/v1/chat/completions",
        json={"model": TINY, "messages": QUESTION, "max_tokens": 2},
        timeout=30,
    )
    assert direct.status_code == 404
    assert adapter_states(gateway_server)[TINY] == "unloaded"
    missing = gateway_cli(
        gateway_server.home, "adapters", "unload", "nope", "--url", gateway_server.url
    )
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


def test_least_recently_used_adapter_is_evicted_within_max_loras(
    gateway_server: RunningGateway,
    client: openai.OpenAI,
    vllm_url: str,
    tiny: Path,
    restore_demo: None,
) -> None:
    copy = tiny.parent / "tiny-copy"
    if not copy.exists():
        shutil.copytree(tiny, copy)
        manifest = yaml.safe_load((copy / "adapter.yaml").read_text())
        (copy / "adapter.yaml").write_text(yaml.safe_dump({**manifest, "name": "tiny-copy"}))
    answer(client, DEMO)
    for name in (TINY, "tiny-copy"):
        resp = httpx.post(f"{gateway_server.url}/v1/adapters/{name}/load", timeout=120)
        assert resp.status_code == 200, resp.text
    # --max-loras=2 in the embedded default: the demo adapter, used longest ago, made room
    assert vllm_adapters(vllm_url) == {TINY, "tiny-copy"}
    states = adapter_states(gateway_server)
    assert (states[DEMO], states[TINY], states["tiny-copy"]) == ("available", "loaded", "loaded")
    # and it is served again on its next use, pushing out the least recently used one
    assert re.fullmatch(r"Answer: [A-D]", answer(client, DEMO).strip())
    assert vllm_adapters(vllm_url) == {DEMO, "tiny-copy"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/adapters/..%2F..%2Fetc%2Fpasswd/load",
        "/v1/adapters/%2Ftmp%2Fevil/load",
        "/v1/adapters/..%2Fadapters%2Fmmlu-med-demo/load",
        "/v1/adapters/..%5C..%5Cwindows/load",
        "/v1/adapters/ETC/load",
        "/v1/adapters/nope/load",
        "/v1/adapters/sneaky/load",
    ],
)
def test_paths_and_unknown_names_are_refused(
    gateway_server: RunningGateway, vllm_url: str, tmp_path: Path, path: str
) -> None:
    sneaky = gateway_server.home / "adapters" / "sneaky"
    if not sneaky.is_symlink():
        outside = tmp_path / "outside"
        shutil.copytree(Path(__file__).parents[2] / "adapters" / DEMO, outside)
        sneaky.parent.mkdir(parents=True, exist_ok=True)
        sneaky.symlink_to(outside, target_is_directory=True)
    before = vllm_adapters(vllm_url)
    resp = httpx.post(f"{gateway_server.url}{path}", timeout=30)
    assert 400 <= resp.status_code < 500, resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert vllm_adapters(vllm_url) == before


def test_bad_training_data_is_refused_naming_the_line(
    gateway_server: RunningGateway, tmp_path: Path
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(TINY_DATA[0]) + "\n" + '{"messages": [{"role": "user"}]}\n')
    out = gateway_server.home / "adapters" / "never"
    result = gateway_cli(
        gateway_server.home,
        "adapters",
        "train",
        "--base",
        "smollm2",
        "--data",
        str(data),
        "--out",
        str(out),
    )
    assert result.returncode == 2
    assert "bad.jsonl:2: messages[0]: 'content' must be a non-empty string" in " ".join(
        result.stderr.split()
    )
    assert not out.exists()
    assert not list(out.parent.glob(".never*"))


@pytest.mark.disruptive
def test_adapters_are_loaded_again_after_vllm_restarts(
    gateway_server: RunningGateway, client: openai.OpenAI
) -> None:
    before = answer(client, DEMO)
    pid = vllm_pid(gateway_server)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{gateway_server.url}/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and vllm_pid(gateway_server) not in (None, pid):
            break
        time.sleep(1)
    # The new vLLM starts with no adapters; the first request loads the demo adapter again.
    assert answer(client, DEMO) == before
    assert adapter_states(gateway_server)[DEMO] == "loaded"
