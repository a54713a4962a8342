"""A real Prometheus for the observability tests: find the binaries, run one, query it.

Debian's ``prometheus`` package brings ``prometheus`` and ``promtool`` (``make
test`` installs it as root where apt-get exists). Missing binaries skip the
test saying what is missing, except in CI (``CI=true``), where they fail it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundry.servers import free_port, port_open
from foundry.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "monitor" / "prometheus.yml"
ALERTS_YML = ROOT / "monitor" / "alerts.yml"
ALERTS_TEST_YML = ROOT / "monitor" / "alerts.test.yml"


def require(binary: str) -> str:
    """Path of ``binary``, or skip (fail in CI) naming what to install."""
    found = shutil.which(binary)
    if found:
        return found
    message = (
        f"{binary} not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus; "
        "`make test` does it when run as root)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def with_credentials(config: dict[str, Any], token_file: Path) -> dict[str, Any]:
    """The config with every scrape's bearer ``credentials_file`` set to ``token_file``."""
    for job in config["scrape_configs"]:
        if "authorization" in job:
            assert job["authorization"]["type"] == "Bearer", job
            job["authorization"]["credentials_file"] = str(token_file)
    return config


def config_for_test(
    settings: Settings, prom_port: int, token_file: Path, interval: str = "1s"
) -> dict[str, Any]:
    """monitor/prometheus.yml with the targets rewritten to this test's loopback ports.

    A target ``<service>:<port>`` must use the port that service listens on by
    default (``FOUNDRY_<SERVICE>_PORT``); it becomes ``127.0.0.1:<settings port>``.
    Scrapes that send a bearer token read it from ``token_file``.
    """
    config = with_credentials(yaml.safe_load(PROMETHEUS_YML.read_text()), token_file)
    config["global"].update(scrape_interval=interval, scrape_timeout=interval,
                            evaluation_interval=interval)  # fmt: skip
    config["rule_files"] = [str(ALERTS_YML)]
    defaults = Settings()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            rewritten = []
            for target in static["targets"]:
                host, _, port = target.partition(":")
                if host == "localhost":  # Prometheus itself
                    rewritten.append(f"127.0.0.1:{prom_port}")
                    continue
                assert int(port) == getattr(defaults, f"{host}_port"), target
                rewritten.append(f"127.0.0.1:{getattr(settings, f'{host}_port')}")
            static["targets"] = rewritten
    return config


class Prometheus:
    """One prometheus process on a loopback port, stopped by pid."""

    def __init__(self, config: dict[str, Any], root: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = root
        self.config_path = root / "prometheus.yml"
        self.log_path = root / "prometheus.log"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = require("prometheus")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited at start:\n{self.log()}")
            if port_open("127.0.0.1", self.port) and self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"prometheus not ready within {timeout}s:\n{self.log()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as resp:
            active: list[dict[str, Any]] = json.loads(resp.read())["data"]["activeTargets"]
        return active

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
