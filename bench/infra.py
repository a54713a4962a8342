"""Servers and child processes of one benchmark run, all stopped by pid at the end.

One nats-server (JetStream, file storage) and one redis-server (no persistence,
as in the test suite) on free loopback ports under a temporary folder; every
Python child is started through :class:`Procs`, which stops it by pid
(SIGCONT, SIGTERM, then SIGKILL) however the run ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foundry.pidfiles import kill_recorded, stop_child
from foundry.servers import ServerProcess, free_port, nats_server, redis_server

ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str], pythonpath: list[Path] | None = None) -> dict[str, str]:
    """The environment of a child: ours without FOUNDRY_* variables, plus ``extra``.

    ``pythonpath`` folders come first on the child's path (shims, a scratch copy of the code).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    paths = [str(p) for p in (pythonpath or [])] + [str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


@dataclass
class Procs:
    """Python children of the benchmark."""

    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        executable: str = sys.executable,
    ) -> subprocess.Popen[bytes]:
        """Start a child in the run's folder: ``python -m`` then imports from ``PYTHONPATH``
        (shims, ``--code`` copies, then this checkout), not from the current directory."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [executable, *args],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.log_dir.parent),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def adopt_run_dir(self, path: Path) -> None:
        """Also stop what a healer recorded in its pid files (in case it could not)."""
        self.run_dirs.append(path)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        stop_child(proc, grace)

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in reversed(self.procs):
            stop_child(proc, grace)
        for folder in self.run_dirs:
            kill_recorded(folder)


@dataclass
class Infra:
    """The servers and children of one run; :meth:`close` stops them all."""

    root: Path
    nats: ServerProcess
    redis: ServerProcess
    procs: Procs
    keep: bool = False

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @classmethod
    def start(cls, keep: bool = False) -> Infra:
        root = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
        nats = nats_server(free_port(), root / "nats").start()
        try:
            redis = redis_server(free_port(), root / "redis", persist=False).start()
        except Exception:
            nats.stop()
            raise
        return cls(root, nats, redis, Procs(root / "logs"), keep)

    def server_pids(self) -> dict[str, int]:
        return {"nats-server": self.nats.pid, "redis-server": self.redis.pid}

    def close(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            self.redis.stop()
            self.nats.stop()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
