"""`foundry up` end to end: embedded servers, supervised gateway and fleet, one Ctrl-C stops all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from foundry.secrets import read_env_file
from foundry.servers import free_port, port_open
from tests.bus import nats_login_ok
from tests.procs import ROOT


def _get(token: str | None, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


async def _check_locked(
    tmp_path: Path, ports: dict[str, int], children: list[psutil.Process]
) -> dict[str, str]:
    """The secrets of a `foundry up` are private and needed; returns client.env's entries."""
    secrets = tmp_path / "data" / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    for path in secrets.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert "client.env" in (tmp_path / "up.log").read_text()
    passwords = json.loads((secrets / "passwords.json").read_text())
    every = [*passwords["nats"].values(), *passwords["redis"].values()]
    for child in children:
        line = " ".join(child.cmdline())
        assert not any(secret in line for secret in every), line
    assert not await asyncio.to_thread(nats_login_ok, ports["nats"])
    anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{ports['redis']}/0")
    with pytest.raises((AuthenticationError, ResponseError)):
        await anonymous.ping()
    await anonymous.aclose()
    return read_env_file(secrets / "client.env")


async def test_foundry_up_end_to_end(tmp_path: Path) -> None:
    # Given free ports and an empty data dir (nothing is running there)
    ports = {k: free_port() for k in ("nats", "redis", "gateway", "healer", "monitor")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(
        {
            "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
            "FOUNDRY_NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
            "FOUNDRY_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "FOUNDRY_GATEWAY_PORT": str(ports["gateway"]),
            "FOUNDRY_HEALER_PORT": str(ports["healer"]),
            "FOUNDRY_MONITOR_PORT": str(ports["monitor"]),
            "FOUNDRY_FLEET": "coder=1,critic=1",
            "FOUNDRY_HANDLERS": "coder=echo,critic=echo",
        }
    )
    log = open(tmp_path / "up.log", "wb")  # noqa: ASYNC230
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "foundry.cli", "up"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{ports['gateway']}"
    children: list[psutil.Process] = []
    try:
        # When it is up
        for _ in range(600):
            if b"cluster up" in (tmp_path / "up.log").read_bytes():
                break
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "up.log").read_text())
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # healer, nats, redis, gateway, 2 workers
        # and the secrets are private, nobody gets in without them, and none is in `ps`
        client = await _check_locked(tmp_path, ports, children)
        # and the API wants the admin token client.env holds
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(_get, None, f"{base}/api/cluster/agents/live")
        assert refused.value.code == 401
        refused.value.close()
        token = client["FOUNDRY_API_TOKEN"]
        for _ in range(100):
            live = await asyncio.to_thread(_get, token, f"{base}/api/cluster/agents/live")
            if live["count"] == 2 and all(a["status"] == "healthy" for a in live["agents"]):
                break
            await asyncio.sleep(0.1)
        # Then a task submitted over HTTP completes
        out = await asyncio.to_thread(
            _get,
            token,
            f"{base}/api/cluster/task/submit",
            {"agent_type": "coder", "description": "via http"},
        )
        rec = await asyncio.to_thread(
            _get, token, f"{base}/api/cluster/task/{out['task_id']}?wait=20"
        )
        assert rec["status"] == "completed"
        # and so does one sent with a core NATS publish (what `nats pub` does, after
        # `. .foundry/secrets/client.env`)
        nc = await nats.connect(client["NATS_URL"])
        await nc.publish("agents.tasks.critic", b"via nats", headers={"Nats-Msg-Id": "up-nats-1"})
        await nc.flush()
        await nc.close()
        rec = await asyncio.to_thread(_get, token, f"{base}/api/cluster/task/up-nats-1?wait=20")
        assert rec["status"] == "completed" and rec["result"]["description"] == "via nats"

        # and the CLI talks to it
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            # (only FOUNDRY_DATA_DIR: the CLI finds the gateway in client.env)
            return subprocess.run(
                [sys.executable, "-m", "foundry.cli", *args],
                env={k: v for k, v in env.items() if k != "FOUNDRY_GATEWAY_PORT"},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        out = await asyncio.to_thread(cli, "status")
        assert out.returncode == 0 and "coder-0" in out.stdout and "critic-0" in out.stdout
        out = await asyncio.to_thread(cli, "submit", "coder", "by cli", "--wait")
        assert out.returncode == 0 and json.loads(out.stdout)["status"] == "completed"
        out = await asyncio.to_thread(cli, "heal")
        assert out.returncode == 0 and "nothing to heal" in out.stdout
        out = await asyncio.to_thread(cli, "submit", "painter", "x")
        assert out.returncode != 0 and "known types: coder, critic" in out.stderr
        # and a killed gateway comes back
        gateway = next(c for c in children if c.cmdline()[-2:] == ["-m", "gateway"])
        gateway.kill()
        for _ in range(200):
            try:
                await asyncio.to_thread(_get, token, f"{base}/health")
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("gateway did not come back")
        # When Ctrl-C is pressed
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0, (tmp_path / "up.log").read_text()
        # Then no process is left behind and the ports are closed
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        for name in ("nats", "redis", "gateway"):
            assert not port_open("127.0.0.1", ports[name])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # forwarded: the healer stops its children
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for child in children:  # only still running when the test failed midway
            with contextlib.suppress(psutil.Error):
                child.kill()
        log.close()
