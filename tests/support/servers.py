"""Start ``gateway serve`` in a subprocess and wait until it is ready (shared by the fixtures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.engines.supervisor import free_port, tail


@dataclass
class GatewayProcess:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn_gateway(
    home: Path, config: Path | None = None, env: dict[str, str] | None = None
) -> GatewayProcess:
    port = free_port()
    log_path = home / "gateway.log"
    environ = {**os.environ, "GATEWAY_HOME": str(home), "GATEWAY_PORT": str(port), **(env or {})}
    command = [sys.executable, "-m", "gateway", "serve"]
    if config is not None:
        command += ["--config", str(config)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    return GatewayProcess(f"http://127.0.0.1:{port}", home, process, log_path)


def wait_ready(gateway: GatewayProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            pytest.fail(
                f"gateway exited with {gateway.process.returncode}:\n{tail(gateway.log_path, 60)}"
            )
        try:
            if httpx.get(f"{gateway.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"gateway not ready after {timeout_s} s:\n{tail(gateway.log_path, 60)}")


def stop_gateway(gateway: GatewayProcess, timeout_s: float = 60) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()


@contextmanager
def running_gateway(
    home: Path, config_text: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> Iterator[GatewayProcess]:
    """A gateway on ``config_text`` (written to ``home/gateway.yaml``), stopped afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gateway.yaml"
    config.write_text(config_text)
    gateway = spawn_gateway(home, config, env)
    try:
        wait_ready(gateway, timeout_s)
        yield gateway
    finally:
        stop_gateway(gateway)
