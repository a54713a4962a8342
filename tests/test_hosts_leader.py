"""The leader lease among healers: cluster-wide duties are done once, by one healer, and go on
on another within the lease's TTL when the leader is killed.

Two hosts are two healers with their own FOUNDRY_HOST_ID and data dir on the suite's one
NATS and one Redis (loopback).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts import MSG_ID_HEADER
from foundry.store import TaskStore
from tests.cluster import start_healer, watch
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_hosts import HOSTS, all_running, cluster_streams, host_settings, leaders


async def dead(store: TaskStore, task_id: str) -> bool:
    record = await store.get(task_id)
    return record is not None and record.status == "dead"


async def test_one_leader_does_the_cluster_duties_and_another_takes_over(
    make_settings: Any, nc: NATS, redis: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given two hosts' healers, host-a started first, with a short unserved grace
    base = make_settings(fleet={"echo": 1}, handlers={"echo": "echo"}, unserved_grace=1.0)
    store = TaskStore(redis, base.names, base.result_ttl)
    host_a, host_b = (host_settings(base, host, tmp_path) for host in HOSTS)
    js = nc.jetstream()
    async with cluster_streams(base, procs), watch(nc, base) as events:
        healer_a = start_healer(procs, host_a)
        await eventually(lambda: _is(leaders(nc, base), ["host-a"]), 30)
        start_healer(procs, host_b)
        await all_running(nc, base, HOSTS)
        # When a task for a type nobody serves arrives while both run
        await js.publish(base.names.tasks("ghost"), b"boo", headers={MSG_ID_HEADER: "ghost-1"})
        await eventually(lambda: dead(store, "ghost-1"), 20)
        # Then exactly one healer (the leader) dead-lettered it, once
        assert await leaders(nc, base) == ["host-a"]
        letters = events.of("dead_letter", agent_type="ghost")
        assert [e["host"] for e in letters] == ["host-a"], letters
        # When the leader's healer is killed
        os.kill(healer_a.pid, signal.SIGKILL)
        killed = time.monotonic()
        # Then host-b leads within the lease's TTL plus its poll ...
        await eventually(lambda: _is(leaders(nc, base), ["host-b"]), base.lease_ttl + 10)
        took_over = time.monotonic() - killed
        # ... and the duty goes on there: the next unserved task is dead-lettered by host-b
        await js.publish(base.names.tasks("ghost"), b"boo", headers={MSG_ID_HEADER: "ghost-2"})
        await eventually(lambda: dead(store, "ghost-2"), 20)
        letters = events.of("dead_letter", agent_type="ghost")
        assert [e["host"] for e in letters] == ["host-a", "host-b"], letters
        print(f"leader healer killed → host-b leads in {took_over:.2f}s (FOUNDRY_LEASE_TTL="
              f"{base.lease_ttl}s)")  # fmt: skip
        assert took_over <= base.lease_ttl + 2.0, took_over  # generous: TTL + poll + a status round


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
