"""A three-node NATS cluster on namespace hosts: R3 streams, and killing the stream leader
under load loses nothing.

Three hosts (network namespaces on a bridge) each run a nats-server node with
routes to the others over mutual TLS, the role users ``foundry up`` generates, and
a Sentinel; Redis runs as master and replica. A healer with an echo fleet runs on
host 0. Everything the test itself does on the network runs on host 0's namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundry.connect import connect_nats
from tests import netns
from tests.hacluster import HaCluster, provisioned, start, wait_jetstream
from tests.netns import Hosts
from tests.steadyload import steady_load

FLEET = {"echo": 2}


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    netns.require()
    with Hosts(3) as made:
        yield made


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Iterator[HaCluster]:
    made = start(hosts, tmp_path / "cluster", FLEET)
    yield made
    print(made.logs()[-20000:] if os.environ.get("FOUNDRY_TEST_CLUSTER_LOGS") else "")


async def _stream_state(cluster: HaCluster) -> dict[str, Any]:
    settings = cluster.settings()
    nc = await connect_nats(settings, "probe")
    try:
        info = await nc.jetstream().stream_info(settings.names.tasks_stream)
        assert info.cluster is not None
        return {
            "replicas": info.config.num_replicas,
            "leader": info.cluster.leader,
            "peers": sorted(p.name for p in info.cluster.replicas or []),
        }
    finally:
        await nc.close()


@pytest.mark.timeout(240)
async def test_killing_the_stream_leader_under_load_loses_nothing(cluster: HaCluster) -> None:
    host = cluster.hosts[0]
    settings = cluster.settings()
    # Given a JetStream cluster of three nodes and a healer running an echo fleet on host 0
    await host.run(wait_jetstream(cluster))
    healer = cluster.start_healer(host, settings)
    await host.run(provisioned(cluster))
    state = await host.run(_stream_state(cluster))
    # FOUNDRY_STREAM_REPLICAS is unset: a cluster of three servers gets R3 streams
    assert state["replicas"] == 3, state
    assert len(state["peers"]) == 2, state
    leader = cluster.node_of(state["leader"])

    async def kill_leader() -> dict[str, Any]:
        os.kill(cluster.nats[leader].pid, signal.SIGKILL)
        return {"killed": state["leader"]}

    # When tasks are published steadily and the stream leader is killed 4 s in
    report = await host.run(
        steady_load(settings, "echo", count=1500, rate=100, fault=kill_leader, fault_after=4)
    )
    print("nats leader kill:", json.dumps(report.summary()))
    after = await host.run(_stream_state(cluster))
    # Then every task was stored and completed, and another node leads the stream
    assert healer.poll() is None, cluster.logs()
    assert report.not_acked == [], report.summary()
    assert report.lost == [], report.summary()
    assert after["leader"] and after["leader"] != state["leader"], after


async def _serve(address: str, port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, address, port)


async def _close(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _reaches(address: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1.0)
    except (OSError, TimeoutError):
        return False
    data = await reader.read(2)
    writer.close()
    return data == b"hi"


async def _reaches_soon(address: str, port: int, timeout: float = 10.0) -> bool:
    """Whether ``address`` answers within ``timeout`` (a link just up may take a moment)."""
    deadline = time.monotonic() + timeout
    while not await _reaches(address, port):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_namespace_hosts_reach_each_other_until_a_link_goes_down() -> None:
    netns.require()
    with Hosts(2) as hosts:
        names = [h.netns for h in hosts]
        # Given a server on host 1, When host 0 connects, Then it answers
        server = await hosts[1].run(_serve(hosts[1].address, 7000))
        try:
            assert await hosts[0].run(_reaches_soon(hosts[1].address, 7000))
            # and the machine's own namespace has no address on the hosts' network
            own = await asyncio.to_thread(
                subprocess.run, ["ip", "-o", "addr"], capture_output=True, text=True, timeout=10
            )
            assert f"{hosts.prefix}." not in own.stdout
            # When host 1's link is down, Then nothing reaches it; up again, it answers
            hosts[1].link(up=False)
            assert not await hosts[0].run(_reaches(hosts[1].address, 7000))
            hosts[1].link(up=True)
            assert await hosts[0].run(_reaches_soon(hosts[1].address, 7000))
        finally:
            await hosts[1].run(_close(server))
    # and every namespace is gone afterwards
    listed = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    )
    assert not any(name in listed.stdout for name in [*names, hosts.switch])
