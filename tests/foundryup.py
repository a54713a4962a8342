"""`foundry up` as a user runs it: a subprocess with a data dir and loopback ports, its
credentials read from ``<data dir>/secrets/``, stopped by pid with its children checked.

Only the variables a user would set are passed: the data dir, one free port per listener
(so parallel runs do not clash) and whatever the test adds (fleet, handlers, thresholds).
Every inherited ``FOUNDRY_*`` variable is dropped, so nothing from the test's own
environment configures it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from foundry.secrets import read_env_file
from foundry.servers import free_port
from tests.procs import ROOT

LISTENERS = ("nats", "redis", "gateway", "healer", "monitor", "nats_monitor")


class FoundryUp:
    """One ``python -m foundry.cli up`` and what it made under its data dir."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.data = root / "data"
        self.log_path = root / "up.log"
        self.ports = {name: free_port() for name in LISTENERS}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
        self.env.update(
            {
                "FOUNDRY_DATA_DIR": str(self.data),
                "FOUNDRY_NATS_URL": f"nats://127.0.0.1:{self.ports['nats']}",
                "FOUNDRY_REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
                "FOUNDRY_GATEWAY_PORT": str(self.ports["gateway"]),
                "FOUNDRY_HEALER_PORT": str(self.ports["healer"]),
                "FOUNDRY_MONITOR_PORT": str(self.ports["monitor"]),
                # the default 8222 may be taken here: the same port setting, another number
                "FOUNDRY_NATS_MONITOR_PORT": str(self.ports["nats_monitor"]),
                # custom handlers are importable from the checkout, as for any user module
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
                **env,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: dict[int, psutil.Process] = {}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def port(self, name: str) -> int:
        return self.ports[name]

    def start(self, timeout: float = 90.0) -> FoundryUp:
        """Start it and wait for ``cluster up`` in its output."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "foundry.cli", "up"],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while b"cluster up" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"foundry up did not come up:\n{self.log()}")
            time.sleep(0.1)
        self.note_children()
        return self

    def client_env(self) -> dict[str, str]:
        """``secrets/client.env``: the API token, NATS_URL, the gateway's address."""
        return read_env_file(self.data / "secrets" / "client.env")

    def token(self) -> str:
        return self.client_env()["FOUNDRY_API_TOKEN"]

    def module(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m name args`` as a user runs it beside this cluster: only the data dir
        is passed (the ``foundry`` CLI finds the gateway and the token in client.env)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
        env["FOUNDRY_DATA_DIR"] = str(self.data)
        return subprocess.run(
            [sys.executable, "-m", name, *args], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.module("foundry.cli", *args)

    def note_children(self) -> None:
        """Remember every current descendant (relaunched ones too) to check at stop."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.children.setdefault(child.pid, child)

    def log(self, tail: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        logs = self.data / "logs"
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            text += f"\n--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
        return text[-tail:]

    def stop(self, grace: float = 60.0) -> list[Any]:
        """SIGTERM, SIGKILL after ``grace``; returns the descendants still running after it
        (each then killed by pid), so a caller can assert none was left behind."""
        if self.proc is None:
            return []
        self.note_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        left = []
        for child in self.children.values():
            with contextlib.suppress(psutil.Error):
                child.wait(5)
            with contextlib.suppress(psutil.Error):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    left.append(child)
                    child.kill()
        return left
