"""A client that leaves cancels its request inside the real vLLM, within 2 seconds.

vLLM's own gauges of running and waiting requests are the engine-side proof: they must fall to
zero soon after the client closes its connection, long before the 2,000 tokens asked for are
generated. Waiting requests count too: on a loaded machine vLLM may preempt a running request
back into its queue, and a gauge read at one instant has then missed it (a CI run saw the
stream's tokens arrive with the running gauge at 0).
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
IN_VLLM = re.compile(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def in_vllm(vllm_url: str) -> float:
    """The requests vLLM holds: running, or waiting in its queue."""
    text = httpx.get(f"{vllm_url}/metrics", timeout=5).text
    return sum(float(v) for v in IN_VLLM.findall(text))


def wait_running(vllm_url: str, at_least: bool, within_s: float) -> float:
    """Seconds until vLLM holds some requests (``at_least``) or none; fails after ``within_s``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        count = in_vllm(vllm_url)
        if (count >= 1) if at_least else (count == 0):
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"vLLM still holds {in_vllm(vllm_url)} requests after {within_s} s")


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
        # The request is in vLLM before the client leaves (the gauges follow the engine's
        # steps, so this waits for them rather than reading them once).
        wait_running(vllm_url, at_least=True, within_s=30)
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
