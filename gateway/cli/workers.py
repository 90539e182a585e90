"""``gateway serve --workers N``: N HTTP worker processes on one machine, one set of engines.

The parent launches the vLLM servers the config asks for (their supervisors stay here, so
there is one vLLM per replica however many workers there are), binds the listening socket
once, and starts N copies of ``gateway serve`` on it. Each worker is told the launched
engines' URLs (``GATEWAY_ENGINE_URLS``) and serves those models as ``urls``. The kernel hands
each new connection to one worker. Without ``state.url`` each worker has its own rate limits,
cooldowns and retry budget (a key gets N times its limit); with it they share them.

SIGTERM or SIGINT: the workers drain (``reliability.drain_timeout_s``), then the parent stops
vLLM. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from gateway.config.schema import GatewayConfig, VLLMModel
from gateway.engines.factory import build_engine
from gateway.engines.vllm import VLLMEngine
from gateway.settings import Settings

log = logging.getLogger(__name__)

URLS_ENV = "GATEWAY_ENGINE_URLS"
WORKER_ENV = "GATEWAY_WORKER"


def with_worker_urls(config: GatewayConfig) -> GatewayConfig:
    """In a worker: the models the parent launched, served at the URLs it passed down."""
    raw = os.environ.get(URLS_ENV)
    if not raw:
        return config
    urls: dict[str, list[str]] = json.loads(raw)
    models = dict(config.models)
    for name, found in urls.items():
        spec = models[name]
        assert isinstance(spec, VLLMModel)
        models[name] = spec.model_copy(update={"launch": None, "urls": found})
    return config.model_copy(update={"models": models})


def inherited_socket(fd: int) -> socket.socket:
    """In a worker: the parent's listening socket, as the TCP socket it is.

    uvicorn's own ``fd=`` wraps any descriptor as a Unix socket; the event loop then leaves
    Nagle's algorithm on for every connection it accepts, and a response written in two parts
    waits for the client's delayed ACK (about 40 ms a request: ``make bench-scale``).
    ``socket.socket(fileno=...)`` asks the kernel for the family instead.
    """
    return socket.socket(fileno=fd)


def run_workers(
    config: GatewayConfig,
    settings: Settings,
    *,
    config_path: Path | None,
    host: str,
    port: int,
    workers: int,
) -> None:
    asyncio.run(_parent(config, settings, config_path, host, port, workers))


async def _parent(
    config: GatewayConfig,
    settings: Settings,
    config_path: Path | None,
    host: str,
    port: int,
    workers: int,
) -> None:
    engines = {
        name: build_engine(name, spec, settings, config.base_dir)
        for name, spec in config.models.items()
        if isinstance(spec, VLLMModel) and spec.launch is not None
    }
    launched = [e for e in engines.values() if isinstance(e, VLLMEngine)]
    await asyncio.gather(*(e.start() for e in launched))
    urls = {e.model_id: [s.url for s in e.supervisors] for e in launched}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def spawn(index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "gateway", "serve", "--worker-fd", str(sock.fileno())]
        if config_path is not None:
            command += ["--config", str(config_path)]
        env = {**os.environ, URLS_ENV: json.dumps(urls), WORKER_ENV: str(index)}
        return subprocess.Popen(command, pass_fds=(sock.fileno(),), env=env)

    children = [spawn(i) for i in range(workers)]
    log.info("gateway: %d workers on %s:%d sharing %s", workers, host, port, urls or "no vLLM")
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping.is_set():
                    log.warning(
                        "worker %d exited (code %s); starting it again", i, child.returncode
                    )
                    children[i] = spawn(i)
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        grace = config.reliability.drain_timeout_s + 15
        for child in children:
            try:
                await asyncio.to_thread(child.wait, grace)
            except subprocess.TimeoutExpired:
                child.kill()
        sock.close()
        await asyncio.gather(*(e.stop() for e in launched), return_exceptions=True)
