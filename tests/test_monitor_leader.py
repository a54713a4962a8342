"""The monitor lease: with two hosts' monitors on one cluster, only the leader exports the
cluster-wide series, each exports its own host's, and the other takes over within the
lease's TTL when the leader is killed.

Two hosts are two ``python -m monitor`` processes with their own FOUNDRY_HOST_ID and port
on the suite's one NATS and one Redis (loopback).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from foundry.natsauth import MONITOR
from foundry.provision import provision
from foundry.servers import free_port
from foundry.settings import Settings
from tests.cluster import watch
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_hosts import host_settings
from tests.test_monitor import Samples, parse_metrics, value

# one family of each kind the leader alone exports: JetStream figures, heartbeat
# totals, worker counts, event counters
CLUSTER = (
    "foundry_queue_pending", "foundry_stream_messages", "foundry_tasks_completed_total",
    "foundry_workers", "foundry_heal_events_total", "foundry_jetstream_up",
)  # fmt: skip
# and of each kind every monitor exports for its own host
HOST = ("foundry_host_cpu_usage_ratio", "foundry_workers_desired", "foundry_nats_up")


def families(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def scrape(http: aiohttp.ClientSession, port: int) -> Samples | None:
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return parse_metrics(await resp.text()) if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


def start_monitor(procs: ProcessGroup, settings: Settings) -> Any:
    return procs.start(["-m", "monitor"], settings, f"monitor-{settings.host_id}", MONITOR)


async def test_one_monitor_exports_the_cluster_series_and_another_takes_over(
    make_settings: Any, nc: NATS, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given the cluster's streams and two hosts' monitors, host-a's started first
    base = make_settings(fleet={"coder": 1}, handlers={"coder": "echo"}, host_interval=0.3)
    await provision(nc.jetstream(), base)
    host_a, host_b = (
        host_settings(base, host, tmp_path, monitor_port=free_port())
        for host in ("host-a", "host-b")
    )
    async with aiohttp.ClientSession() as http, watch(nc, base) as events:
        monitor_a = start_monitor(procs, host_a)

        async def leads(settings: Settings) -> Samples | None:
            m = await scrape(http, settings.monitor_port)
            leader = value(m or {}, "foundry_monitor_leader", host=settings.host_id)
            return m if leader == 1 and set(CLUSTER) <= families(m or {}) else None

        await eventually(lambda: leads(host_a), 30, interval=0.1)
        start_monitor(procs, host_b)
        # and one worker on host-b
        procs.worker(host_b, "coder", "--worker-id", "coder-0@host-b")

        async def both_sampled() -> tuple[Samples, Samples] | None:
            a, b = await scrape(http, host_a.monitor_port), await scrape(http, host_b.monitor_port)
            if a is None or b is None:
                return None
            beat_seen = value(a, "foundry_workers", agent_type="coder", state="idle") == 1
            own = value(b, "foundry_worker_up", agent_type="coder", worker="coder-0@host-b")
            return (a, b) if beat_seen and own == 1 and set(HOST) <= families(b) else None

        a, b = await eventually(both_sampled, 30, interval=0.1)
        # Then host-a's monitor leads and alone exports the cluster series (they count
        # host-b's worker); host-b's exports only its host's, its worker among them
        assert value(a, "foundry_monitor_leader", host="host-a") == 1
        assert value(b, "foundry_monitor_leader", host="host-b") == 0
        assert not set(CLUSTER) & families(b), set(CLUSTER) & families(b)
        assert set(HOST) <= families(a)
        assert value(a, "foundry_worker_up", agent_type="coder", worker="coder-0@host-b") is None
        elected = events.of("leader", duty="monitor")
        assert [e["host"] for e in elected] == ["host-a"], elected
        # When the leading monitor is killed
        os.kill(monitor_a.pid, signal.SIGKILL)
        killed = time.monotonic()
        # Then host-b's exports the cluster series within the lease's TTL plus a poll
        b = await eventually(lambda: leads(host_b), base.lease_ttl + 10, interval=0.05)
        took_over = time.monotonic() - killed
        assert value(b, "foundry_workers", agent_type="coder", state="idle") == 1
        # and its election is a heal event naming the monitor it replaced
        await eventually(lambda: len(events.of("leader", duty="monitor")) == 2, 5)
        event = events.of("leader", duty="monitor")[-1]
        assert event["host"] == "host-b", event
        assert event["previous_holder"] == f"host-a-{monitor_a.pid}", event
        assert event["since_previous_write_seconds"] >= 0, event
        print(f"leading monitor killed → host-b exports the cluster series in {took_over:.2f}s "
              f"(FOUNDRY_LEASE_TTL={base.lease_ttl}s; heal.leader says "
              f"{event['since_previous_write_seconds']}s after host-a's last renewal)")  # fmt: skip
        assert took_over <= base.lease_ttl + 3.0, took_over  # generous: TTL + poll + a scrape
