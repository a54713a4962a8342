"""The monitor against real servers: host samples, the heartbeat exporter, event counters,
queue depth, a Redis outage, the gateway's request metrics, and the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from foundry import codec
from foundry.connect import connect_nats
from foundry.contracts import HealAction, HealEvent, HostSample, SlotKind
from foundry.natsauth import MONITOR
from foundry.roles import role_settings
from foundry.servers import free_port
from foundry.settings import Settings
from monitor import create_app
from tests.bus import AuthRedis
from tests.conftest import Gateway, RunningApp, eventually
from tests.procs import ROOT, ProcessGroup, child_env
from tests.test_flow import submit

SAMPLE_KEYS = {
    "host", "at", "cpu_percent", "load1", "memory_percent", "swap_percent", "disks",
    "nats_ok", "nats_rtt_seconds", "redis_ok", "redis_rtt_seconds", "processes",
}  # fmt: skip
DISK_KEYS = {"path", "percent", "inodes_percent", "free_bytes"}
PROCESS_KEYS = {"worker_id", "agent_type", "pid", "rss_bytes", "cpu_percent"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class RunningMonitor(RunningApp):
    async def metrics(self) -> Samples:
        async with self.http.get(self.url("/metrics")) as resp:
            assert resp.status == 200
            return parse_metrics(await resp.text())


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(
        host_interval=0.3, watch_paths=(tmp_path,), fleet={"coder": 1, "critic": 1},
        handlers={"coder": "echo", "critic": "tests.handlers:fail"},
    )  # fmt: skip


@pytest.fixture
def make_monitor(serve_app: Any) -> Callable[[Settings], Any]:
    async def start(settings: Settings) -> RunningMonitor:
        app = create_app(role_settings(settings, MONITOR))
        running: RunningMonitor = await serve_app(app, RunningMonitor)
        return running

    return start


async def next_sample(nc: NATS, settings: Settings, accept: Callable[[dict[str, Any]], bool],
                      timeout: float = 20) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """The first host sample ``accept`` likes (raw payload and decoded body)."""
    found: asyncio.Future[tuple[bytes, dict[str, Any]]] = asyncio.get_running_loop().create_future()

    async def on_sample(msg: Msg) -> None:
        body = codec.loads(msg.data)
        if not found.done() and accept(body):
            found.set_result((msg.data, body))

    sub = await nc.subscribe(settings.names.host(">"), cb=on_sample)
    try:
        return await asyncio.wait_for(found, timeout)
    finally:
        await sub.unsubscribe()


async def test_host_sample_is_published_with_the_agreed_keys(
    settings: Settings, nc: NATS, make_monitor: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker and a monitor sampling every 0.3 s
    worker = procs.worker(settings, "coder")
    await make_monitor(settings)
    # When a sample lists that worker's process
    raw, body = await next_sample(
        nc, settings, lambda b: any(p["pid"] == worker.pid for p in b["processes"])
    )
    # Then it carries exactly the keys the healer's policies read, with sane values
    assert set(body) == SAMPLE_KEYS
    assert body["nats_ok"] is True and body["redis_ok"] is True
    assert isinstance(body["nats_rtt_seconds"], float) and body["nats_rtt_seconds"] >= 0
    assert isinstance(body["redis_rtt_seconds"], float)
    assert 0 <= body["cpu_percent"] <= 100 and 0 <= body["memory_percent"] <= 100
    [disk] = body["disks"]
    assert set(disk) == DISK_KEYS and disk["path"] == str(tmp_path)
    assert 0 <= disk["percent"] <= 100 and disk["free_bytes"] > 0
    [proc] = [p for p in body["processes"] if p["pid"] == worker.pid]
    assert set(proc) == PROCESS_KEYS and proc["agent_type"] == "coder"
    assert proc["rss_bytes"] > 10_000_000  # a real Python process, measured
    sample = HostSample.from_payload(raw)
    assert sample.to_json() == body


async def test_worker_counters_never_go_down_across_a_relaunch(
    settings: Settings, nc: NATS, make_monitor: Any, procs: ProcessGroup
) -> None:
    # Given a coder worker with a stable id, a failing critic worker, and the monitor
    mon = await make_monitor(settings)
    first = procs.worker(settings, "coder", "--worker-id", "coder-0")
    procs.worker(settings, "critic", "--worker-id", "critic-0")
    js = nc.jetstream()
    for i in range(3):
        await js.publish(settings.names.tasks("coder"), f"job {i}".encode())
    for i in range(2):
        await js.publish(settings.names.tasks("critic"), f"doomed {i}".encode())

    async def counted(completed: float, failed: float) -> Samples | None:
        m = await mon.metrics()
        done = value(m, "foundry_tasks_completed_total", agent_type="coder")
        bad = value(m, "foundry_tasks_failed_total", agent_type="critic")
        return m if (done, bad) == (completed, failed) else None

    m = await eventually(lambda: counted(3, 2), 30, interval=0.2)
    # Then completed, failed and the duration histogram come from the heartbeats
    assert value(m, "foundry_task_duration_seconds_count", agent_type="coder") == 3
    assert value(m, "foundry_task_queue_wait_seconds_count", agent_type="coder") == 3
    assert value(m, "foundry_task_duration_seconds_bucket", agent_type="coder", le="+Inf") == 3
    assert value(m, "foundry_worker_tasks_failed_total", agent_type="critic",
                 worker="critic-0") == 2  # fmt: skip
    assert value(m, "foundry_workers", agent_type="coder", state="idle") == 1
    # When the coder process is killed and a new one takes the same worker id
    os.kill(first.pid, signal.SIGKILL)
    second = procs.worker(settings, "coder", "--worker-id", "coder-0")
    await js.publish(settings.names.tasks("coder"), b"after the relaunch")
    # Then the cluster total keeps the dead process's three and adds the new one
    m = await eventually(lambda: counted(4, 2), 30, interval=0.2)
    assert value(m, "foundry_worker_tasks_completed_total", agent_type="coder",
                 worker="coder-0") == 1  # fmt: skip
    assert value(m, "foundry_worker_pid", agent_type="coder", worker="coder-0") == second.pid
    assert value(m, "foundry_task_duration_seconds_count", agent_type="coder") == 4


async def test_task_and_heal_events_become_counters(
    settings: Settings, nc: NATS, make_monitor: Any
) -> None:
    # Given a monitor
    mon = await make_monitor(settings)
    names = settings.names

    async def publish(subject: str, **body: Any) -> None:
        await nc.publish(subject, codec.dumps(body))

    async def heal(action: HealAction, slot_kind: SlotKind | None = None, **body: Any) -> None:
        event = HealEvent(action, "host-a", slot_kind=slot_kind, **body)
        await nc.publish(names.heal_event(action), event.to_payload())

    # When the gateway and the healer publish events (as they do on these subjects)
    await publish(names.task_event("queued", "coder"), task_id="a")
    await publish(names.task_event("queued", "coder"), task_id="b")
    await publish(names.task_event("dead", "critic"), task_id="c")
    worker, service = SlotKind.WORKER, SlotKind.SERVICE
    await heal(HealAction.RELAUNCH, worker, agent_type="coder", slot="coder-0", reason="exit",
               details={"detect_seconds": 0.4})  # fmt: skip
    await heal(HealAction.RELAUNCH, worker, agent_type="coder", slot="coder-0", reason="made-up")
    await heal(HealAction.RELAUNCH, service, agent_type="gateway", slot="gateway", reason="exit")
    await heal(HealAction.KILL_SILENT, worker, agent_type="coder", slot="coder-0")
    await heal(HealAction.QUARANTINE, worker, agent_type="critic", slot="critic-0",
               details={"restarts": 6})  # fmt: skip
    await heal(HealAction.REMEDIATE, reason="disk over threshold",
               details={"policy": "disk", "step": "clean_logs", "outcome": "dry_run"})  # fmt: skip
    await heal(HealAction.RELAUNCH, agent_type="Not A Type", reason="exit")
    await nc.flush()

    # Then each shows up under few, fixed label values (subscriptions run independently,
    # so wait for all of them)
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float | None] = {
        ("foundry_tasks_submitted_total", (("agent_type", "coder"),)): 2,
        ("foundry_tasks_dead_total", (("agent_type", "critic"),)): 1,
        ("foundry_relaunches_total", (("agent_type", "coder"), ("reason", "exit"))): 1,
        ("foundry_relaunches_total", (("agent_type", "coder"), ("reason", "other"))): 1,
        ("foundry_relaunches_total", (("agent_type", "gateway"), ("reason", "exit"))): 1,
        ("foundry_relaunch_detect_seconds_count", (("reason", "exit"),)): 1,
        ("foundry_silent_kills_total", (("agent_type", "coder"),)): 1,
        ("foundry_quarantines_total", (("agent_type", "critic"),)): 1,
        ("foundry_slots_quarantined", (("agent_type", "critic"),)): 1,
        ("foundry_remediations_total", (("outcome", "dry_run"), ("policy", "disk"))): 1,
        ("foundry_heal_events_total", (("action", "relaunch"),)): 4,
    }

    async def counts() -> dict[tuple[str, tuple[tuple[str, str], ...]], float | None]:
        m = await mon.metrics()
        return {key: value(m, key[0], **dict(key[1])) for key in expected}

    async def settled() -> bool:
        return await counts() == expected

    try:
        await eventually(settled, 15, interval=0.1)
    except AssertionError:
        assert await counts() == expected  # shows what differs
    m = await mon.metrics()
    assert not any("Not A Type" in dict(labels).get("agent_type", "") for _, labels in m)
    assert value(m, "foundry_workers", agent_type="gateway", state="idle") is None
    # When the slot is released, it leaves quarantine
    await heal(HealAction.RELEASE, worker, agent_type="critic", slot="critic-0")

    async def released() -> bool:
        m = await mon.metrics()
        return value(m, "foundry_slots_quarantined", agent_type="critic") == 0

    await eventually(released, 15, interval=0.1)


async def test_queue_depth_and_stream_state_from_jetstream(
    settings: Settings, nc: NATS, make_monitor: Any
) -> None:
    # Given three coder tasks in the normal lane, two high and one low, and no coder worker
    js = nc.jetstream()
    for i in range(3):
        await js.publish(settings.names.tasks("coder"), f"waiting {i}".encode())
    for lane, n in (("high", 2), ("low", 1)):
        for i in range(n):
            await js.publish(settings.names.tasks("coder", lane), f"{lane} {i}".encode())
    mon = await make_monitor(settings)

    # Then the monitor reports them pending for coder, in all and lane by lane
    async def pending() -> Samples | None:
        m = await mon.metrics()
        return m if value(m, "foundry_queue_pending", agent_type="coder") == 6 else None

    m = await eventually(pending, 15, interval=0.1)
    for lane, n in (("high", 2), ("normal", 3), ("low", 1)):
        assert value(m, "foundry_queue_lane_pending", agent_type="coder", priority=lane) == n
    assert value(m, "foundry_queue_ack_pending", agent_type="coder") == 0
    assert value(m, "foundry_stream_messages", stream=settings.names.tasks_stream) == 6
    assert value(m, "foundry_dead_letters", agent_type="coder") == 0
    assert value(m, "foundry_jetstream_up") == 1
    assert value(m, "foundry_host_disk_usage_ratio", path=str(settings.watched_paths[0]))


async def test_redis_outage_is_reported_not_fatal(
    make_settings: Callable[..., Settings], own_redis: AuthRedis, make_monitor: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given a monitor on its own redis-server
    settings = make_settings(host_interval=0.3, watch_paths=(tmp_path,),
                             redis_url=own_redis.url)  # fmt: skip
    mon = await make_monitor(settings)
    nc = await connect_nats(settings, "test")
    try:
        await next_sample(nc, settings, lambda b: b["redis_ok"])
        # When Redis stops
        own_redis.stop()
        # Then samples say so, the metric says so, and the monitor stays healthy
        _, body = await next_sample(nc, settings, lambda b: not b["redis_ok"])
        assert body["redis_rtt_seconds"] is None and body["nats_ok"] is True
        m = await mon.metrics()
        assert value(m, "foundry_redis_up") == 0
        async with mon.http.get(mon.url("/health")) as resp:
            assert resp.status == 200 and (await resp.json())["redis"] == "unreachable"
        # When it comes back, so does the probe
        own_redis.start()
        await next_sample(nc, settings, lambda b: b["redis_ok"])
    finally:
        await nc.close()


async def test_gateway_metrics_label_routes_by_pattern(
    settings: Settings, gateway: Gateway
) -> None:
    # Given a submission, a read of that task and a request for no route
    out = await submit(gateway, agent_type="coder", description="metered", task_id="metered-1")
    async with gateway.http.get(gateway.url("/api/cluster/task/metered-1")):
        pass
    async with gateway.http.get(gateway.url("/no/such/route")):
        pass
    # Then /metrics has latency by route pattern and status, never the task id
    async with gateway.http.get(gateway.url("/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert out["task_id"] not in text
    m = parse_metrics(text)
    name = "foundry_gateway_request_duration_seconds_count"
    assert value(m, name, route="/api/cluster/task/submit", method="POST", status="202") == 1
    assert value(m, name, route="/api/cluster/task/{task_id}", method="GET", status="200") == 1
    assert value(m, name, route="unmatched", method="GET", status="404") == 1


def run_monitor(settings: Settings, *args: str, **env: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args], env=child_env(settings, MONITOR, **env), cwd=ROOT,
        capture_output=True, timeout=30,
    ).returncode  # fmt: skip


async def test_command_line_check_and_exit_codes(
    make_settings: Callable[..., Settings], procs: ProcessGroup
) -> None:
    settings = make_settings(monitor_port=free_port(), host_interval=0.3, connect_timeout=1.0)
    # A bad setting exits 2; no monitor to probe, or no NATS at start-up, exits 3
    assert await asyncio.to_thread(run_monitor, settings, FOUNDRY_HOST_INTERVAL="often") == 2
    assert await asyncio.to_thread(run_monitor, settings, "--check") == 3
    nowhere = f"nats://127.0.0.1:{free_port()}"
    assert await asyncio.to_thread(run_monitor, settings, FOUNDRY_NATS_URL=nowhere) == 3
    # A running monitor answers --check with 0, and stops with 0 on SIGTERM
    proc = procs.start(["-m", "monitor"], settings, "monitor")

    async def healthy() -> bool:
        assert proc.poll() is None, procs.logs()
        return await asyncio.to_thread(run_monitor, settings, "--check") == 0

    await eventually(healthy, 20, interval=0.3)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
