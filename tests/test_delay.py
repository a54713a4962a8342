"""Delayed start: a task with ``delay``, ``not_before`` or ``Foundry-Not-Before`` never starts
earlier, says ``scheduled`` until then, and the limits are enforced with clear errors.

The delays are JetStream message schedules on AGENT_SCHEDULES, sourced into the
task lanes when they fire; an AGENT_TASKS stream made before there were lanes
is updated in place, keeping what it holds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StreamConfig

from foundry.contracts import TaskStatus, parse_task
from foundry.errors import MalformedTask
from foundry.provision import provision
from foundry.schedule import rfc3339_ms
from foundry.settings import Settings
from foundry.store import TaskStore
from tests.conftest import Gateway
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task


async def get_task(gw: Gateway, task_id: str) -> dict[str, Any]:
    async with gw.http.get(gw.url(f"/api/cluster/task/{task_id}")) as resp:
        assert resp.status == 200, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


async def refused(gw: Gateway, **body: Any) -> dict[str, Any]:
    async with gw.http.post(gw.url("/api/cluster/task/submit"), json=body) as resp:
        assert resp.status == 400, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


def test_schedule_times_round_up_to_the_millisecond() -> None:
    assert rfc3339_ms(1700000000.0) == "2023-11-14T22:13:20.000Z"
    assert rfc3339_ms(1700000000.0001) == "2023-11-14T22:13:20.001Z"


def test_not_before_header_is_read_and_a_bad_one_fails_the_task() -> None:
    task = parse_task(b"hi", {"Foundry-Not-Before": "1800000000.5"}, "coder", 3, 1024)
    assert task.not_before == 1800000000.5
    for bad in ("soon", "nan", "12"):
        with pytest.raises(MalformedTask, match="Foundry-Not-Before"):
            parse_task(b"hi", {"Foundry-Not-Before": bad}, "coder", 3, 1024)


async def test_delayed_tasks_start_on_time_and_are_scheduled_until_then(
    settings: Settings, gateway: Gateway, procs: ProcessGroup
) -> None:
    # Given a coder worker
    procs.worker(settings, "coder")
    # When ten tasks are submitted with delay=2
    submitted = []
    for i in range(10):
        at = time.time()
        out = await submit(gateway, agent_type="coder", description=f"later {i}", delay=2)
        assert out["not_before"] >= at + 2
        submitted.append((out["task_id"], at))
    # Then each says scheduled at first
    first = await get_task(gateway, submitted[0][0])
    assert first["status"] == TaskStatus.SCHEDULED
    assert first["not_before"] >= submitted[0][1] + 2
    # and none starts before its time, each soon after it
    lateness = []
    for task_id, at in submitted:
        record = await wait_task(gateway, task_id, wait=30)
        assert record["status"] == "completed", procs.logs()
        assert record["attempts"] == 1
        lateness.append(record["started_at"] - (at + 2))
    print(
        f"\ndelay=2 s, start - (submit + 2 s) over {len(lateness)} tasks: "
        f"mean {statistics.mean(lateness) * 1000:.1f} ms, max {max(lateness) * 1000:.1f} ms, "
        f"min {min(lateness) * 1000:.1f} ms"
    )
    assert min(lateness) >= 0
    assert max(lateness) < 5  # a generous bound: a guard against a schedule never firing


async def test_not_before_header_from_a_nats_publisher_is_honoured(
    settings: Settings, gateway: Gateway, nc: NATS, procs: ProcessGroup
) -> None:
    # Given a coder worker, and a plain-text task published with Foundry-Not-Before 3 s ahead
    procs.worker(settings, "coder")
    not_before = time.time() + 3
    await nc.jetstream().publish(
        settings.names.tasks("coder"),
        b"wake me later",
        headers={"Nats-Msg-Id": "nb-1", "Foundry-Not-Before": f"{not_before:.3f}"},
    )

    # Then the worker reschedules it: it says scheduled, then runs under the same id, on time
    async def scheduled() -> bool:
        async with gateway.http.get(gateway.url("/api/cluster/task/nb-1")) as resp:
            return resp.status == 200 and (await resp.json())["status"] == "scheduled"

    deadline = time.monotonic() + 10
    while not await scheduled():
        assert time.monotonic() < deadline, procs.logs()
        await asyncio.sleep(0.05)
    record = await wait_task(gateway, "nb-1", wait=30)
    assert record["status"] == "completed", procs.logs()
    assert record["result"]["description"] == "wake me later"
    assert record["started_at"] >= not_before
    assert record["attempts"] == 1


async def test_a_short_wait_is_held_by_the_worker(
    settings: Settings, gateway: Gateway, nc: NATS, procs: ProcessGroup
) -> None:
    # Given a task published to the low lane with Foundry-Not-Before half a second ahead
    procs.worker(settings, "coder")
    await asyncio.sleep(1)
    not_before = round(time.time() + 0.5, 3)  # what the header below says
    await nc.jetstream().publish(
        settings.names.tasks("coder", "low"),
        b"soon",
        headers={"Nats-Msg-Id": "nb-short", "Foundry-Not-Before": f"{not_before:.3f}"},
    )
    # Then it does not start before then
    record = await wait_task(gateway, "nb-short", wait=30)
    assert record["status"] == "completed", procs.logs()
    assert record["started_at"] >= not_before


async def test_a_scheduled_task_can_be_cancelled_before_it_starts(
    settings: Settings, gateway: Gateway, procs: ProcessGroup, redis: aioredis.Redis
) -> None:
    # Given a worker and a task delayed by 1.5 s
    procs.worker(settings, "coder")
    out = await submit(gateway, agent_type="coder", description="never", delay=1.5)
    # When it is cancelled while it waits
    store = TaskStore(redis, settings.names, settings.result_ttl)
    assert await store.cancel(out["task_id"]) == "cancelled"
    # Then it never starts, also once its time has come and gone
    await asyncio.sleep(2.5)
    record = await get_task(gateway, out["task_id"])
    assert record["status"] == "cancelled" and record["started_at"] is None


async def test_delay_limits_are_refused_naming_the_field(
    settings: Settings, gateway: Gateway
) -> None:
    body = {"agent_type": "coder", "description": "x"}
    assert (await refused(gateway, **body, delay=-1))["field"] == "delay"
    assert (await refused(gateway, **body, delay="soon"))["field"] == "delay"
    far = await refused(gateway, **body, not_before=time.time() + settings.max_delay + 60)
    assert far["field"] == "not_before" and "FOUNDRY_MAX_DELAY" in far["message"]
    too_long = await refused(gateway, **body, delay=settings.max_delay + 60)
    assert too_long["field"] == "delay" and "FOUNDRY_MAX_DELAY" in too_long["message"]
    both = await refused(gateway, **body, delay=1, not_before=time.time() + 5)
    assert both["field"] == "delay"


async def test_an_existing_task_stream_gains_the_lanes_in_place(
    settings: Settings, nc: NATS
) -> None:
    # Given an AGENT_TASKS made before lanes and schedules, holding a task
    js, names = nc.jetstream(), settings.names
    for stream in (names.tasks_stream, names.schedules_stream):
        await js.delete_stream(stream)
    await js.add_stream(
        StreamConfig(
            name=names.tasks_stream,
            subjects=[names.tasks()],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    await js.publish(names.tasks("coder"), b"kept", headers={"Nats-Msg-Id": "old-1"})
    # When it is provisioned again
    await provision(js, settings)
    # Then it covers every lane, sources the schedules, and still holds the task
    info = await js.stream_info(names.tasks_stream)
    assert set(info.config.subjects or []) == set(names.task_lanes())
    assert [s.name for s in info.config.sources or []] == [names.schedules_stream]
    assert info.state.messages == 1
    assert (await js.stream_info(names.schedules_stream)).config.allow_msg_schedules
