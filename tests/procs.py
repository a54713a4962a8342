"""Child processes started by tests: launched with settings as env, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from foundry.natsauth import worker_role
from foundry.pidfiles import kill_recorded
from foundry.roles import role_env
from foundry.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def child_env(settings: Settings, role: str | None = None, **extra: str) -> dict[str, str]:
    """The child's environment; with ``role``, that role's NATS credentials (as a healer does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(settings.to_env())
    if role is not None:
        env.update(role_env(settings, role))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class ProcessGroup:
    """Processes a test started; every one is stopped by pid at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.run_dirs: list[Path] = []

    def start(
        self, args: list[str], settings: Settings, name: str, role: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=child_env(settings, role, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        log.close()
        self.procs.append(proc)
        return proc

    def worker(
        self, settings: Settings, agent_type: str, *extra: str, **env: str
    ) -> subprocess.Popen[bytes]:
        return self.start(
            ["-m", "workers", "--type", agent_type, *extra],
            settings,
            f"worker-{agent_type}",
            worker_role(agent_type),
            **env,
        )

    def logs(self) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def adopt_run_dir(self, path: Path) -> None:
        """Also stop, at teardown, what a healer recorded in this run dir (it may be killed)."""
        self.run_dirs.append(path)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for folder in self.run_dirs:
            kill_recorded(folder)
