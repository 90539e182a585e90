"""A private PostgreSQL server on loopback for the tests, which they may stop and start."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.engines.supervisor import free_port

INSTALL_HINT = "PostgreSQL server binaries not found; `make test` installs them (apt postgresql)"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(INSTALL_HINT)


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    user_cmd: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://switchboard@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        cmd = [*self.user_cmd, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir}"
        self._ctl("-o", options, "-l", str(self.datadir / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


def start_postgres() -> PostgresServer:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    root.chmod(0o755)
    datadir = root / "data"
    datadir.mkdir()
    # initdb refuses to run as root: run the server as the postgres user then.
    user_cmd: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
        user_cmd = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*user_cmd, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "switchboard"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PostgresServer(bindir, datadir, free_port(), user_cmd)
    server.start()
    return server
