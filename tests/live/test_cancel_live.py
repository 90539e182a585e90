"""A client that leaves cancels its request inside the real vLLM, within 2 seconds.

vLLM's own gauge of running requests is the engine-side proof: it must fall to zero soon after
the client closes its connection, long before the 2,000 tokens asked for are generated.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow

LONG = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Tell a very long story."}],
    "max_tokens": 2000,
    "ignore_eos": True,  # vLLM's sampling extension: the answer cannot end early
}
RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def running(vllm_url: str) -> float:
    text = httpx.get(f"{vllm_url}/metrics", timeout=5).text
    return sum(float(v) for v in RUNNING.findall(text))


def wait_running(vllm_url: str, at_least: bool, within_s: float) -> float:
    """Seconds until vLLM runs some requests (``at_least``) or none; fails after ``within_s``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        count = running(vllm_url)
        if (count >= 1) if at_least else (count == 0):
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"vLLM still reports {running(vllm_url)} running requests after {within_s} s")


def test_leaving_a_stream_cancels_it_in_vllm(gateway_server: RunningGateway, vllm_url: str) -> None:
    wait_running(vllm_url, at_least=False, within_s=60)  # earlier tests' requests are done
    with httpx.stream(
        "POST",
        f"{gateway_server.url}/v1/chat/completions",
        json={**LONG, "stream": True},
        timeout=60,
    ) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            while not next(lines).startswith("data: {"):
                pass
        assert running(vllm_url) >= 1
    assert wait_running(vllm_url, at_least=False, within_s=2.0) < 2.0


def test_leaving_a_request_cancels_it_in_vllm(
    gateway_server: RunningGateway, vllm_url: str
) -> None:
    wait_running(vllm_url, at_least=False, within_s=60)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            httpx.post(
                f"{gateway_server.url}/v1/chat/completions",
                json=LONG,
                timeout=httpx.Timeout(60, read=4.0),
            )
        except httpx.ReadTimeout as exc:
            outcome.append(exc)

    client = threading.Thread(target=ask)
    client.start()
    wait_running(vllm_url, at_least=True, within_s=4.0)
    client.join(10)
    assert outcome, "the client should have given up on its read timeout"
    assert wait_running(vllm_url, at_least=False, within_s=2.0) < 2.0
