"""Joining: `foundry up --env-file cluster.env` on a second data dir runs that host's healer,
services and fleet on the first host's servers, and embeds nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from foundry.secrets import read_env_file
from foundry.servers import free_port
from tests.procs import ROOT
from tests.test_up import _get


def _up(tmp_path: Path, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundry.cli", "up", *args],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    return proc


async def _wait_up(tmp_path: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(900):
        text = (tmp_path / f"{name}.log").read_text()
        if "cluster up" in text:
            return
        assert proc.poll() is None, text
        await asyncio.sleep(0.1)
    raise AssertionError((tmp_path / f"{name}.log").read_text())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # foundry up drains its healer, which stops its children
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _host_env(tmp_path: Path, host: str, **extra: str) -> dict[str, str]:
    ports = {k: free_port() for k in ("gateway", "healer", "monitor")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(
        {
            "FOUNDRY_HOST_ID": host,
            "FOUNDRY_DATA_DIR": str(tmp_path / host),
            "FOUNDRY_GATEWAY_PORT": str(ports["gateway"]),
            "FOUNDRY_HEALER_PORT": str(ports["healer"]),
            "FOUNDRY_MONITOR_PORT": str(ports["monitor"]),
            "FOUNDRY_FLEET": "coder=1",
            "FOUNDRY_HANDLERS": "coder=echo",
            **extra,
        }
    )
    return env


async def test_second_host_joins_with_cluster_env_and_embeds_nothing(tmp_path: Path) -> None:
    # Given a first host that embeds NATS and Redis and writes cluster.env
    first_env = _host_env(
        tmp_path,
        "host-a",
        FOUNDRY_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        FOUNDRY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    first = _up(tmp_path, "host-a", first_env)
    second: subprocess.Popen[bytes] | None = None
    try:
        await _wait_up(tmp_path, "host-a", first)
        cluster_env = tmp_path / "host-a" / "secrets" / "cluster.env"
        assert cluster_env.stat().st_mode & 0o777 == 0o600
        # When a second host runs `foundry up --env-file cluster.env` on its own data dir
        second = _up(
            tmp_path, "host-b", _host_env(tmp_path, "host-b"), "--env-file", str(cluster_env)
        )
        await _wait_up(tmp_path, "host-b", second)
        # Then it embeds nothing: no server among its processes, no server data in its dir
        log = (tmp_path / "host-b.log").read_text()
        assert "nats: already running" in log and "redis: already running" in log, log
        commands = [" ".join(p.cmdline()) for p in psutil.Process(second.pid).children(True)]
        assert not any("nats-server" in c or "redis-server" in c for c in commands), commands
        assert not (tmp_path / "host-b" / "nats").exists()
        assert not (tmp_path / "host-b" / "redis").exists()
        # ... and the first host's gateway shows both hosts' workers, grouped by host
        client = read_env_file(tmp_path / "host-a" / "secrets" / "client.env")
        base = client["FOUNDRY_GATEWAY_URL"]
        live: dict[str, Any] = {}
        for _ in range(150):
            live = await asyncio.to_thread(
                _get, client["FOUNDRY_API_TOKEN"], f"{base}/api/cluster/agents/live"
            )
            if live["hosts"] == {"host-a": ["coder-0@host-a"], "host-b": ["coder-0@host-b"]}:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(live)
        assert all(a["status"] == "healthy" for a in live["agents"]), live
    finally:
        if second is not None:
            _stop(second)
        _stop(first)


async def test_joining_refuses_to_embed_when_the_cluster_does_not_answer(tmp_path: Path) -> None:
    # Given a cluster.env naming servers nobody runs
    env_file = tmp_path / "cluster.env"
    env_file.write_text(
        f"FOUNDRY_NATS_URL=nats://127.0.0.1:{free_port()}\n"
        f"FOUNDRY_REDIS_URL=redis://127.0.0.1:{free_port()}/0\n"
    )
    # When a host tries to join with it
    proc = _up(tmp_path, "lonely", _host_env(tmp_path, "lonely"), "--env-file", str(env_file))
    try:
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        _stop(proc)
    # Then it exits 2 naming the variable, and started no server of its own
    assert code == 2
    assert "FOUNDRY_NATS_URL" in (tmp_path / "lonely.log").read_text()
    assert not (tmp_path / "lonely" / "nats").exists()
