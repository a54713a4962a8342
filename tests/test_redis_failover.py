"""Redis through Sentinel: WAIT-confirmed results, and a master failover under load.

The first tests run on loopback against real redis-servers (a master, then a
replica of it): with ``FOUNDRY_REDIS_MIN_REPLICAS`` a finish counts only once a
replica confirms it. The failover runs on namespace hosts (``tests/netns.py``): the
master on host 1, its replica on host 2, a Sentinel on each of three hosts, a
three-node NATS cluster, a healer with an echo fleet on host 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel

from foundry.connect import connect_redis
from foundry.embedded import REDIS_USER, redis_config
from foundry.errors import CacheUnavailable
from foundry.names import Names
from foundry.redisha import HaPasswords, node_lines
from foundry.secrets import new_secret, write_private
from foundry.servers import ServerProcess, free_port, redis_server
from foundry.store import TaskStore
from tests import netns
from tests.hacluster import (
    MASTER_HOST,
    MASTER_NAME,
    REDIS_PORT,
    REPLICA_HOST,
    SENTINEL_PORT,
    HaCluster,
    provisioned,
    start,
    wait_jetstream,
)
from tests.netns import Hosts
from tests.steadyload import steady_load

FLEET = {"echo": 2}


def _node(root: Path, password: str, ha: HaPasswords, master: int | None = None) -> ServerProcess:
    """A redis-server on loopback from the generators: the cluster's user, the HA users,
    and (with ``master``) a replica of that port."""
    data = root / "data"
    data.mkdir(parents=True)
    port = free_port()
    text = redis_config(port, data, password, persist=False)
    text += node_lines(ha, ("127.0.0.1", master) if master else None)
    config = write_private(root / "redis.conf", text)
    return redis_server(port, root, config=config).start()


async def test_a_finish_counts_only_once_a_replica_confirms_it(tmp_path: Path) -> None:
    password, ha = new_secret(), HaPasswords(new_secret(), new_secret())
    names = Names("w" + uuid.uuid4().hex[:8])
    # Given a Redis master with no replica, and a store that wants one
    master = _node(tmp_path / "master", password, ha)
    replica: ServerProcess | None = None
    url = f"redis://{REDIS_USER}:{password}@127.0.0.1:{master.port}/0"
    client = aioredis.Redis.from_url(url)
    try:
        store = TaskStore(client, names, 60, min_replicas=1, wait_timeout=0.2)
        await store.claim("t1", "echo", 1, "echo-0", time.time())
        # When a worker finishes a task, Then it does not count as stored
        with pytest.raises(CacheUnavailable, match="WAIT: 0 of 1 replica"):
            await store.finish("t1", "echo", 1, "echo-0", "completed", {"ok": 1})
        # and with no replica wanted the same finish is the plain, batched one
        plain = TaskStore(client, names, 60)
        await plain.claim("t2", "echo", 1, "echo-0", time.time())
        assert await plain.finish("t2", "echo", 1, "echo-0", "completed", 2) == "ok"
        # When a replica of the master comes up
        replica = _node(tmp_path / "replica", password, ha, master=master.port)
        # Then the retried finish is confirmed (it finds the task final: the earlier write
        # stands, and the replica acknowledged it too)
        deadline = time.monotonic() + 20
        while True:
            try:
                outcome = await store.finish("t1", "echo", 1, "echo-0", "completed", {"ok": 1})
                break
            except CacheUnavailable:
                assert time.monotonic() < deadline, "the replica never confirmed"
                await asyncio.sleep(0.2)
        assert outcome == "completed"
        on_replica = aioredis.Redis.from_url(
            f"redis://{REDIS_USER}:{password}@127.0.0.1:{replica.port}/0"
        )
        try:
            assert await on_replica.get(names.result_key("t1")) == b'{"ok":1}'
        finally:
            await on_replica.aclose()
    finally:
        await client.aclose()
        if replica is not None:
            replica.stop()
        master.stop()


# ---- failover on namespace hosts --------------------------------------------------------


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    netns.require()
    with Hosts(3) as made:
        yield made


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> HaCluster:
    return start(hosts, tmp_path / "cluster", FLEET)


async def _master_address(cluster: HaCluster, unknown: str = "") -> tuple[str, int]:
    """The master the Sentinels name (``unknown`` while they see it down and none yet)."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(h.address, SENTINEL_PORT) for h in cluster.hosts],
        sentinel_kwargs={"password": cluster.sentinel_password, "socket_timeout": 1.0},
    )
    try:
        try:
            address: tuple[str, int] = await sentinel.discover_master(MASTER_NAME)
        except MasterNotFoundError:
            if not unknown:
                raise
            return unknown, 0
        return address
    finally:
        for client in sentinel.sentinels:
            await client.aclose()


@pytest.mark.timeout(240)
async def test_a_master_failover_under_load_loses_no_result(cluster: HaCluster) -> None:
    host = cluster.hosts[0]
    # Given results that count only once a replica confirms them, through Sentinel
    settings = cluster.settings(redis_min_replicas=1, redis_wait_timeout=1.0)
    await host.run(wait_jetstream(cluster))
    healer = cluster.start_healer(host, settings)
    await host.run(provisioned(cluster))
    old = cluster.hosts[MASTER_HOST].address
    assert await host.run(_master_address(cluster)) == (old, REDIS_PORT)

    async def fail_over() -> dict[str, Any]:
        began = time.monotonic()
        os.kill(cluster.redis[MASTER_HOST].pid, signal.SIGKILL)
        deadline = began + 60
        while (await _master_address(cluster, old))[0] == old:
            assert time.monotonic() < deadline, "Sentinel never promoted the replica"
            await asyncio.sleep(0.1)
        promoted = time.monotonic() - began
        # the old master comes back; Sentinel makes it a replica of the new one
        await asyncio.to_thread(cluster.start_redis, MASTER_HOST)
        return {"promoted_after_s": round(promoted, 3),
                "old_master_back_after_s": round(time.monotonic() - began, 3)}  # fmt: skip

    # When tasks are published steadily and the master is killed 4 s in
    report = await host.run(
        steady_load(settings, "echo", count=1500, rate=100, fault=fail_over, fault_after=4)
    )
    print("redis failover:", json.dumps(report.summary()))
    # Then the replica leads, every task was stored and every result is there
    assert healer.poll() is None, cluster.logs()
    assert report.not_acked == [], report.summary()
    assert report.lost == [], report.summary()
    new = await host.run(_master_address(cluster))
    assert new == (cluster.hosts[REPLICA_HOST].address, REDIS_PORT)
    # and the results survive on the new master itself (read there, not through a cache)
    client = await host.run(_count_results(cluster, settings.names, new))
    assert client >= 1500


async def _count_results(cluster: HaCluster, names: Names, address: tuple[str, int]) -> int:
    client = aioredis.Redis(
        host=address[0], port=address[1], username="foundry", password=cluster.redis_password
    )
    try:
        keys = [k async for k in client.scan_iter(f"{names.key_prefix}:result:load-*", count=1000)]
        return len(keys)
    finally:
        await client.aclose()


async def test_the_sentinel_url_reaches_the_master(cluster: HaCluster) -> None:
    # Given the Sentinels' URL with the master's ACL user, When a service connects
    settings = cluster.settings()

    async def round_trip() -> Any:
        client = await connect_redis(settings)
        try:
            await client.set(f"{settings.names.key_prefix}:probe", "1", ex=30)
            return await client.get(f"{settings.names.key_prefix}:probe")
        finally:
            await client.aclose()

    # Then it writes to and reads from the master the Sentinels name
    assert await cluster.hosts[0].run(round_trip()) == b"1"
