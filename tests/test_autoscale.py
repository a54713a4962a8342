"""Autoscaling against real servers: a backlog grows a type's fleet, an idle queue shrinks it
back, and a host without headroom gets no new workers.

The test plays the monitor's part of publishing host samples (the healer's headroom), so
the figures do not depend on how busy the machine running the suite is; an in-process
monitor still turns the healer's scale events into ``foundry_workers_desired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from aiohttp import ClientSession
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from foundry import codec
from foundry.contracts import HostSample
from foundry.natsauth import MONITOR
from foundry.roles import role_settings
from foundry.servers import free_port
from foundry.settings import FleetRange, Settings
from monitor import create_app
from tests.cluster import slots, start_healer, wait_running, watch
from tests.conftest import RunningApp, eventually
from tests.procs import ProcessGroup
from tests.test_monitor import parse_metrics, value

BACKLOG = 3000


def scale_settings(make_settings: Any, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "fleet": {"echo": 1},
        "fleet_ranges": {"echo": FleetRange(1, 4)},
        "handlers": {"echo": "tests.handlers:record"},
        "concurrency": 4,  # with a 50 ms task, one worker does about 80 tasks a second
        "scale_cooldown": 2.0,
        "host_interval": 0.5,
        "healer_port": free_port(),
    }
    base.update(kw)
    settings: Settings = make_settings(**base)
    return settings


@contextlib.asynccontextmanager
async def host_samples(nc: NATS, settings: Settings, cpu: list[float]) -> AsyncIterator[None]:
    """Publish this host's sample every 0.2 s, as the monitor does; ``cpu[0]`` is read each time."""
    host = settings.host_id

    async def loop() -> None:
        while True:
            sample = HostSample(host, time.time(), cpu[0], 0.1, memory_percent=10.0,
                                swap_percent=0.0)  # fmt: skip
            await nc.publish(settings.names.host(host), sample.to_payload())
            await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish_backlog(js: JetStreamContext, settings: Settings, n: int) -> None:
    payload = codec.dumps({"description": "scale", "input": {"sleep": 0.05}})
    for _ in range(n):
        await js.publish(settings.names.tasks("echo"), payload)


async def queue(js: JetStreamContext, settings: Settings) -> tuple[int, int]:
    info = await js.consumer_info(settings.names.tasks_stream, settings.names.consumer("echo"))
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


async def echo_slots(nc: NATS, settings: Settings) -> dict[str, dict[str, Any]]:
    return {k: s for k, s in (await slots(nc, settings)).items() if s["agent_type"] == "echo"}


async def healer_target(http: ClientSession, settings: Settings) -> float | None:
    async with http.get(f"http://127.0.0.1:{settings.healer_port}/metrics") as resp:
        samples = parse_metrics(await resp.text())
    return value(samples, "foundry_healer_fleet_target", agent_type="echo")


async def test_a_backlog_adds_workers_and_an_idle_queue_takes_them_back_to_the_minimum(
    make_settings: Any, nc: NATS, procs: ProcessGroup, serve_app: Any
) -> None:
    # Given echo at 1..4 workers (default FOUNDRY_SCALE_SAMPLES and _INTERVAL, a 2 s
    # cooldown), a host with headroom, and a monitor for this host (its own sampling slowed
    # so that only the test's samples count)
    settings = scale_settings(make_settings)
    js = nc.jetstream()
    monitor_settings = dataclasses.replace(role_settings(settings, MONITOR), host_interval=3600)
    mon = await serve_app(create_app(monitor_settings), RunningApp)
    async with host_samples(nc, settings, [1.0]), watch(nc, settings) as events, ClientSession(
    ) as http:  # fmt: skip
        start_healer(procs, settings)
        first = await wait_running(nc, settings)
        assert list(first) == ["echo-0@host-a"]
        # When 3,000 tasks arrive at once
        began = time.monotonic()
        await publish_backlog(js, settings, BACKLOG)
        published = time.monotonic()
        # Then a scale event adds workers, and a new worker heartbeats
        up = await eventually(lambda: events.of("scale", step="up"), 20)
        decided = time.monotonic()
        beat = await eventually(
            lambda: next((b for b in events.beats if b["worker_id"] != "echo-0@host-a"), None), 20
        )
        heard = time.monotonic()
        assert beat["agent_type"] == "echo" and beat["worker_id"] in up[0]["added"]
        assert (up[0]["from_count"], up[0]["agent_type"], up[0]["reason"]) == (1, "echo", "backlog")
        assert up[0]["backlog"] > 100 and up[0]["backlog_per_worker"] > 100
        assert up[0]["cpu_percent"] == 1.0 and up[0]["memory_percent"] == 10.0
        assert up[0]["cpu_threshold"] == settings.cpu_threshold and up[0]["room_workers"] > 0
        # and the fleet grows while the backlog lasts, up to the maximum of 4
        await eventually(lambda: events.of("scale", step="up", to_count=4), 40)
        at_peak = await echo_slots(nc, settings)
        peaked = time.monotonic()
        assert sorted(at_peak) == [
            "echo-0@host-a",
            "echo-1@host-a",
            "echo-2@host-a",
            "echo-3@host-a",
        ]
        assert await healer_target(http, settings) == 4

        async def desired() -> float | None:
            async with mon.http.get(mon.url("/metrics")) as resp:
                samples = parse_metrics(await resp.text())
            return value(samples, "foundry_workers_desired", agent_type="echo")

        await eventually(lambda: _equals(desired(), 4), 10)
        # When the backlog is done
        await eventually(lambda: _equals(queue(js, settings), (0, 0)), 90, interval=0.2)
        drained = time.monotonic()
        # Then the surplus is drained back to one worker, whose slot kept running
        await eventually(lambda: _equals(_count(echo_slots(nc, settings)), 1), 30, interval=0.1)
        back = time.monotonic()
        down = events.of("scale", step="down")
        assert down and down[-1]["to_count"] == 1 and down[-1]["reason"] == "idle"
        retired = {name for e in down for name in e["retired"]}
        assert retired == {"echo-1@host-a", "echo-2@host-a", "echo-3@host-a"}
        final = await echo_slots(nc, settings)
        assert (
            list(final) == ["echo-0@host-a"]
            and final["echo-0@host-a"]["pid"] == first["echo-0@host-a"]["pid"]
        )
        for name in retired:
            assert not events.of("relaunch", slot=name)  # retired, never relaunched
        assert max(e["to_count"] for e in events.of("scale")) <= 4
        assert await healer_target(http, settings) == 1
        await eventually(lambda: _equals(desired(), 1), 10)
        # and every task finished: the work queue holds nothing
        info = await js.stream_info(settings.names.tasks_stream)
        assert info.state.messages == 0
    processes = {b["pid"] for b in events.beats if b["worker_id"] in retired}
    assert len(processes) == 3 and not any(psutil.pid_exists(pid) for pid in processes)
    print(
        f"backlog of {BACKLOG} published in {published - began:.2f}s; scale-up decided "
        f"{decided - published:.2f}s after, first new worker heartbeat "
        f"{heard - published:.2f}s after; 4 workers after {peaked - published:.2f}s; "
        f"queue empty → back to 1 worker in {back - drained:.2f}s "
        f"(cooldown {settings.scale_cooldown:g}s)"
    )


async def test_a_host_without_headroom_gets_no_new_workers_until_it_cools(
    make_settings: Any, nc: NATS, procs: ProcessGroup
) -> None:
    # Given echo at 1..4 and a host sample over FOUNDRY_CPU_THRESHOLD
    settings = scale_settings(make_settings, scale_interval=0.3, scale_samples=2)
    js = nc.jetstream()
    cpu = [99.0]
    async with host_samples(nc, settings, cpu), watch(nc, settings) as events:
        start_healer(procs, settings)
        await wait_running(nc, settings)
        # When a backlog arrives
        await publish_backlog(js, settings, 1000)
        # Then the healer says once that it cannot scale, and adds nobody
        blocked = await eventually(lambda: events.of("scale", step="blocked"), 20)
        assert blocked[0]["reason"] == "no_headroom" and blocked[0]["cpu_percent"] == 99.0
        assert "FOUNDRY_CPU_THRESHOLD" in blocked[0]["detail"]
        assert blocked[0]["to_count"] == blocked[0]["from_count"] == 1
        await asyncio.sleep(2.0)  # several more checks
        assert len(events.of("scale", step="blocked")) == 1
        assert not events.of("scale", step="up")
        assert list(await echo_slots(nc, settings)) == ["echo-0@host-a"]
        # When the host cools down, the backlog is served by more workers
        cpu[0] = 1.0
        up = await eventually(lambda: events.of("scale", step="up"), 20)
        assert up[0]["from_count"] == 1 and up[0]["to_count"] >= 2


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _count(mapping: Any) -> int:
    return len(await mapping)
