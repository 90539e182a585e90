"""The processes a gateway benchmark runs: the upstream double and the two gateways.

Each server is a child process pinned to its cores before it starts (so every thread it ever
makes inherits the pinning), listening on a free loopback port, with its output in a log file
of the run's work folder. Configurations are the templates beside this file, filled in with
the upstream's address.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"

# What the gateways call the upstream's two models (the double serves them with the profiles
# the suite gives it): a fast one for request/response and TTFT, a slow drip for concurrency.
GATEWAY_MODEL = "bench-model"
GATEWAY_DRIP_MODEL = "bench-drip"
UPSTREAM_MODEL = "upstream-model"
UPSTREAM_DRIP_MODEL = "upstream-drip"

# Variables a parent shell may have set that would change what a gateway does.
_SCRUB = ("GATEWAY_CONFIG", "GATEWAY_API_KEY", "GATEWAY_HOST", "GATEWAY_PORT", "DATABASE_URL")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server and its descendants (0 once it has exited)."""
        return int(tree_sum(self.pid, lambda proc: proc.memory_info().rss))

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        # Each server leads its own process group: SIGTERM reaches any worker it spawned.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def tree_sum(pid: int, figure: Callable[[psutil.Process], float]) -> float:
    """``figure`` summed over a process and its live descendants (0 once it has exited)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += figure(proc)
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    name: str,
    cmd: Sequence[str],
    *,
    cpus: set[int],
    env: Mapping[str, str],
    workdir: Path,
    url: str,
    health_path: str,
    timeout_s: float,
) -> Server:
    log = workdir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full_env.update(env)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(cmd),
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Pinned before exec: threads the server starts later inherit the same cores.
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    server = Server(name, url, process, log)
    try:
        wait_healthy(server, health_path, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_healthy(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{server.name} exited at startup; its log ends:\n{tail}")
            try:
                if client.get(server.url + path).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{server.name} was not healthy within {timeout_s:g} s (see {server.log})")


def fill(template: str, workdir: Path, upstream_url: str) -> Path:
    """A config template beside this file, with the upstream's address, into ``workdir``."""
    text = Template((BENCH_DIR / template).read_text()).substitute(
        upstream_url=upstream_url,
        upstream_model=UPSTREAM_MODEL,
        upstream_drip_model=UPSTREAM_DRIP_MODEL,
    )
    path = workdir / template
    path.write_text(text)
    return path


def start_upstream(
    workdir: Path,
    cpus: set[int],
    *,
    chunks: int = 8,
    chunk_gap_ms: float = 0.0,
    drip: str | None = None,
    latency_ms: float = 0.0,
    load_ms: float = 0.0,
    name: str = "upstream",
) -> Server:
    """The double serving UPSTREAM_MODEL (and UPSTREAM_DRIP_MODEL with the ``drip`` profile);
    ``name`` tells several doubles' logs apart."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    cmd += ["--model", UPSTREAM_MODEL, "--chunks", str(chunks), "--chunk-gap-ms", str(chunk_gap_ms)]
    cmd += ["--latency-ms", str(latency_ms), "--load-ms", str(load_ms)]
    if drip is not None:
        cmd += ["--profile", f"{UPSTREAM_DRIP_MODEL}:{drip}"]
    return _spawn(
        name,
        cmd,
        cpus=cpus,
        env={"PYTHONPATH": str(REPO_ROOT)},
        workdir=workdir,
        url=f"http://{HOST}:{port}",
        health_path="/health",
        timeout_s=15,
    )


def start_switchboard(
    workdir: Path,
    cpus: set[int],
    upstream_url: str,
    config: Path | None = None,
    workers: int = 1,
) -> Server:
    """``gateway serve`` on bench/switchboard.yaml, or on ``config``; its home in ``workdir``.

    With ``workers`` > 1 it is ``gateway serve --workers N``: a parent holding the listening
    socket and N worker processes (one process group, so ``stop`` reaches them all).
    """
    config = config or fill("switchboard.yaml", workdir, upstream_url)
    home = workdir / "switchboard-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    cmd += ["--host", HOST, "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = {"GATEWAY_HOME": str(home), "GATEWAY_LOG_LEVEL": "warning"}
    return _spawn(
        "switchboard",
        cmd,
        cpus=cpus,
        env=env,
        workdir=workdir,
        url=f"http://{HOST}:{port}",
        health_path="/health",
        timeout_s=120,
    )


def start_litellm(workdir: Path, cpus: set[int], upstream_url: str, litellm: Path) -> Server:
    config = fill("litellm_proxy.yaml", workdir, upstream_url)
    port = free_port()
    cmd = [str(litellm), "--config", str(config), "--host", HOST, "--port", str(port)]
    cmd += ["--num_workers", "1"]
    env = {
        "LITELLM_LOG": "ERROR",
        # The bundled price list, not a download at startup (there is no network here anyway).
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    return _spawn(
        "litellm",
        cmd,
        cpus=cpus,
        env=env,
        workdir=workdir,
        url=f"http://{HOST}:{port}",
        health_path="/health/liveliness",
        timeout_s=180,
    )
