"""The benchmark runs end to end in its tiny mode, loses no task and leaves no process behind;
its servers are protected as ``foundry up``'s are.

No timing is asserted: figures belong in the benchmark's report, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from bench.infra import Infra
from bench.session import connect_admin
from foundry.natsauth import ADMIN, CLIENT, user_name
from tests.bus import nats_login_ok

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_quick_bench_runs_every_phase_and_loses_nothing(tmp_path: Path) -> None:
    # Given the benchmark in its quick mode, writing its JSON to a temporary folder
    # When it runs (it starts its own servers, baseline fleet and healer)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    # Then it exits 0 and prints the table with the machine-load note
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| measure | result | target |" in proc.stdout
    assert "machine load at start" in proc.stdout
    assert "over TLS" in proc.stdout and "without a token" in proc.stdout
    [path] = tmp_path.glob("bench-quick-*.json")
    result = json.loads(path.read_text())
    # and every phase completed every task it submitted
    throughput = result["throughput"]
    for system in ("baseline", "foundry", "foundry_tls"):
        best = throughput["best"][system]
        assert best["completed"] == best["tasks"] and best["missing"] == 0, best
        assert best["tasks_per_second"] > 0, best
    assert throughput["ratio"] > 0
    # and the TLS runs went over TLS, every connection, with their ratio to plain NATS
    tls = result["tls"]
    assert tls["tasks_per_second"] > 0 and tls["ratio_to_plain"] > 0, tls
    assert tls["connections"] > 0 and tls["tls_connections"] == tls["connections"], tls
    assert tls["redis"], "the report says whether Redis ran over TLS"
    # and HTTP ran with a token and, through the second gateway, without one
    for key in ("http", "http_without_token"):
        http = result[key]
        assert http["completed"] == http["accepted"] == http["tasks"], http
        assert http["statuses"] == {"202": http["tasks"]}, http
        assert http["tasks_per_second"] > 0, http
    assert result["http_auth"]["ratio"] > 0, result["http_auth"]
    for row in result["latency"]:
        assert row["completed"] == row["sent"], row
    # and the healing phases replaced the killed workers and lost no task under load
    heal = result["healing"]
    assert heal["kill9"]["seconds"]["n"] == 2
    assert all(k["new_pid"] != k["old_pid"] for k in heal["kill9"]["kills"])
    assert heal["sigstop"]["seconds"]["n"] == 1
    assert heal["under_load"]["lost"] == 0
    assert heal["under_load"]["completed"] == heal["under_load"]["tasks"]
    # and no process it started is still running
    assert result["pids"], "the report lists the pids it started"
    assert [role for role, pid in result["pids"].items() if _alive(pid)] == []


async def test_bench_servers_refuse_anonymous_clients_and_plain_text_on_tls() -> None:
    # Given the benchmark's servers, with the TLS nats-server
    infra = Infra.start(tls=True)
    try:
        names, bus, tls_bus = infra.bus.names, infra.bus, infra.tls_bus
        assert tls_bus is not None
        # Then NATS refuses an anonymous client and a wrong password, and takes the role users
        assert not nats_login_ok(bus.port)
        assert not nats_login_ok(bus.port, user_name(names, CLIENT), "wrong")
        assert nats_login_ok(bus.port, user_name(names, CLIENT), bus.passwords[CLIENT])
        # and the TLS server refuses a plain-text client, even with the right password
        tls_admin = user_name(tls_bus.names, ADMIN)
        assert not nats_login_ok(tls_bus.port, tls_admin, tls_bus.passwords[ADMIN])
        # while its admin connects over TLS, trusting the run's CA
        nc = await connect_admin(tls_bus)
        try:
            assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
        finally:
            await nc.close()
        # and Redis refuses the default user but serves the ACL user within its keys
        anonymous = aioredis.Redis(port=infra.store.port)
        user = aioredis.Redis.from_url(infra.redis_url)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await anonymous.ping()
            assert await user.set("foundry:bench-check", "1", ex=5)
            with pytest.raises(redis.exceptions.NoPermissionError):
                await user.set("elsewhere", "1", ex=5)
        finally:
            await anonymous.aclose()
            await user.aclose()
    finally:
        infra.close()
