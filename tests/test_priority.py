"""Priority lanes: high is taken before normal, normal before low, within one agent type.

Names and contracts first (no servers), then the lanes end to end: a high task
overtakes a queue of low ones on a single worker, a plain publish is normal, a
``Foundry-Priority: low`` header on the normal subject moves the task to the
low lane under its own id, and every piece keyed by consumer knows the lanes:
the bus permissions, the healer's ack-subject check and advisories, the
gateway's queue view.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.contracts import (
    InFlightEntry,
    MaxDeliveriesAdvisory,
    TaskPriority,
    parse_task,
    values,
)
from foundry.errors import MalformedTask
from foundry.names import LANES, Names
from foundry.natsauth import HEALER, worker_role
from foundry.provision import provision
from foundry.settings import Settings
from foundry.store import TaskStore
from healer.deadletter import DeadLetters
from tests.conftest import Gateway
from tests.procs import ProcessGroup
from tests.test_bus_auth import Conn, connect_as  # noqa: F401  (a fixture)
from tests.test_flow import submit, wait_task

SLOW = {"FOUNDRY_HANDLERS": "coder=tests.handlers:record", "FOUNDRY_WORKER_CONCURRENCY": "1"}


# ---- names and contracts ------------------------------------------------------------
def test_lanes_are_the_priorities_in_order() -> None:
    assert values(TaskPriority) == LANES == ("high", "normal", "low")


@pytest.mark.parametrize("agent_type", ["coder", "a-high", "high", "low-b", "x_low"])
def test_lane_consumers_never_collide_and_map_back(agent_type: str) -> None:
    names = Names()
    others = ["coder", "a", "a-high", "high", "low", "low-b", "x", "x_low", "workers"]
    theirs = {c for t in others if t != agent_type for c in names.consumers(t)}
    for lane in LANES:
        consumer = names.consumer(agent_type, lane)
        assert consumer not in theirs
        assert names.lane_of_consumer(consumer) == (agent_type, lane)
        assert names.type_of_consumer(consumer) == agent_type
    assert names.consumer(agent_type) == f"workers-{agent_type}"  # unchanged for normal
    assert names.type_of_consumer("workers-coder@medium") is None
    assert names.type_of_consumer("other-coder") is None


def test_lane_of_a_subject_reads_the_token_after_the_type() -> None:
    names = Names("ns")
    assert names.priority_of_subject(names.tasks("high")) == "normal"  # a type named high
    assert names.priority_of_subject(names.tasks("high", "low")) == "low"
    assert names.priority_of_subject(names.tasks("coder", "high")) == "high"


def test_priority_header_is_read_and_a_bad_one_fails_the_task_naming_it() -> None:
    task = parse_task(b"hi", {"Foundry-Priority": "LOW"}, "coder", 7, 1024)
    assert task.priority is TaskPriority.LOW and task.task_id == "seq-7"
    assert parse_task(b"hi", None, "coder", 7, 1024).priority is TaskPriority.NORMAL
    with pytest.raises(MalformedTask, match="Foundry-Priority='urgent'"):
        parse_task(b"hi", {"Foundry-Priority": "urgent"}, "coder", 7, 1024)


def test_foundry_task_id_names_a_moved_task() -> None:
    headers = {"Foundry-Task-Id": "job-1", "Nats-Msg-Id": "job-1@low"}
    assert parse_task(b"hi", headers, "coder", 9, 1024).task_id == "job-1"


# ---- end to end ---------------------------------------------------------------------
async def test_high_task_overtakes_queued_low_tasks(
    settings: Settings, gateway: Gateway, procs: ProcessGroup
) -> None:
    # Given 60 low tasks of ~50 ms queued for one coder worker running one task at a time
    low = [
        (await submit(gateway, agent_type="coder", description=f"low {i}",
                      input={"sleep": 0.05}, priority="low"))["task_id"]
        for i in range(60)
    ]  # fmt: skip
    procs.worker(settings, "coder", **SLOW)
    first = await wait_task(gateway, low[0], wait=30)
    assert first["status"] == "completed", procs.logs()
    # When a high task is submitted after all of them, while the worker works through them
    out = await submit(
        gateway, agent_type="coder", description="urgent", input={"sleep": 0.05}, priority="high"
    )
    assert out["priority"] == "high"
    high = await wait_task(gateway, out["task_id"], wait=60)
    assert high["status"] == "completed", procs.logs()
    # Then it finished before half of the low tasks did
    records = [await wait_task(gateway, t, wait=60) for t in low]
    assert all(r["status"] == "completed" for r in records)
    before = sum(r["finished_at"] < high["finished_at"] for r in records)
    print(f"\nhigh task finished after {before} of 60 low tasks")
    assert before < 30


async def test_unknown_priority_is_refused_naming_the_field(gateway: Gateway) -> None:
    async with gateway.http.post(
        gateway.url("/api/cluster/task/submit"),
        json={"agent_type": "coder", "description": "x", "priority": "urgent"},
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["field"] == "priority" and "high, normal, low" in body["message"]


async def test_plain_publish_is_normal_and_low_header_moves_it_behind_normal_tasks(
    settings: Settings, gateway: Gateway, nc: NATS, procs: ProcessGroup
) -> None:
    # Given, with no worker yet, a task published to the normal subject with
    # Foundry-Priority: low and no id (it gets seq-<n>), then five plain tasks
    js, subject = nc.jetstream(), settings.names.tasks("coder")
    ack = await js.publish(subject, b"sent as low", headers={"Foundry-Priority": "low"})
    moved_id = f"seq-{ack.seq}"
    plain = []
    for i in range(5):
        await js.publish(subject, f"plain {i}".encode(), headers={"Nats-Msg-Id": f"plain-{i}"})
        plain.append(f"plain-{i}")
    # When a worker (one task at a time) takes them
    procs.worker(settings, "coder", **SLOW)
    # Then the plain tasks ran as normal ones, and the low one under its first id, after them
    moved = await wait_task(gateway, moved_id, wait=30)
    assert moved["status"] == "completed", procs.logs()
    assert moved["result"]["description"] == "sent as low"
    for task_id in plain:
        record = await wait_task(gateway, task_id, wait=30)
        assert record["status"] == "completed"
        assert record["started_at"] < moved["started_at"]
    assert moved["attempts"] == 1


async def test_status_shows_each_lane_of_a_queue(
    settings: Settings, gateway: Gateway, nc: NATS
) -> None:
    # Given queued coder tasks in each lane and no worker
    for lane, n in (("high", 1), ("normal", 2), ("low", 3)):
        for i in range(n):
            await submit(gateway, agent_type="coder", description=f"{lane} {i}", priority=lane)
    # Then the status view sums them and shows them lane by lane
    async with gateway.http.get(gateway.url("/api/cluster/status")) as resp:
        queue = (await resp.json())["queues"]["coder"]
    assert queue["pending"] == 6
    assert queue["pending_by_priority"] == {"high": 1, "normal": 2, "low": 3}


# ---- what is keyed by consumer ------------------------------------------------------
async def test_a_worker_uses_every_lane_of_its_type_and_none_of_another(
    connect_as: Callable[[str], Awaitable[Conn]],  # noqa: F811  (the fixture)
    nc: NATS,
    settings: Settings,
) -> None:
    names, stream = settings.names, settings.names.tasks_stream
    coder = await connect_as(worker_role("coder"))
    # Given a task in each coder lane, When the coder worker fetches and acks each
    for lane in LANES:
        await nc.jetstream().publish(names.tasks("coder", lane), lane.encode())
        psub = await coder.js.pull_subscribe_bind(
            durable=names.consumer("coder", lane), stream=stream
        )
        (msg,) = await psub.fetch(1, timeout=5)
        assert msg.data == lane.encode()
        await msg.ack()
    # and moves a task to its own low lane
    await coder.js.publish(names.tasks("coder", "low"), b"moved")
    # Then another type's lanes stay closed to it, and so does its own high lane
    for lane in LANES:
        consumer = names.consumer("critic", lane)
        nxt = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        await coder.api_refused(nxt, coder.nc.request(nxt, b"{}", timeout=1))
        await coder.publish_refused(f"$JS.ACK.{stream}.{consumer}.1.1.1.0.0", b"+ACK")
    await coder.publish_refused(names.tasks("coder", "high"))
    await coder.publish_refused(names.tasks("critic", "low"))


async def test_the_healer_creates_every_lane_consumer(
    connect_as: Callable[[str], Awaitable[Conn]],  # noqa: F811  (the fixture)
    nc: NATS,
    settings: Settings,
) -> None:
    # Given no consumers for a type yet
    names, js = settings.names, nc.jetstream()
    for consumer in names.consumers("critic"):
        await js.delete_consumer(names.tasks_stream, consumer)
    # When the healer provisions
    healer = await connect_as(HEALER)
    await provision(healer.js, settings, ["critic"])
    # Then the type has one consumer per lane, each filtered to its lane
    for lane in LANES:
        info = await js.consumer_info(names.tasks_stream, names.consumer("critic", lane))
        assert info.config.filter_subject == names.tasks("critic", lane)


async def test_healer_naks_lane_deliveries_and_reads_lane_advisories(
    settings: Settings, nc: NATS, redis: Any
) -> None:
    names = settings.names
    emitted: list[dict[str, Any]] = []

    async def emit(*_: Any, **fields: Any) -> None:
        emitted.append(fields)

    store = TaskStore(redis, names, 60)
    dead = DeadLetters(nc, store, names, poison_kills=3, max_deliver=1, emit=emit)
    # Given a coder worker that held a high-lane task when it died
    js = nc.jetstream()
    await js.publish(names.tasks("coder", "high"), b"urgent", headers={"Nats-Msg-Id": "h-1"})
    psub = await js.pull_subscribe_bind(
        durable=names.consumer("coder", "high"), stream=names.tasks_stream
    )
    (msg,) = await psub.fetch(1, timeout=5)
    entry = InFlightEntry("h-1", msg.metadata.sequence.stream, msg.reply, 1, time.time())
    entry.running = False
    # When the healer acts for it
    await dead.worker_died("coder", [entry], {"reason": "test"})
    # Then the lane's ack subject counts as the type's own: the task is redelivered at once
    (again,) = await psub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    # and for another type it does not
    assert not dead._owned("critic", entry)
    # and a max-deliveries advisory of a lane consumer names the type
    advisory = MaxDeliveriesAdvisory.from_payload(
        b'{"stream": "%s", "consumer": "workers-coder@low", "stream_seq": 1, "deliveries": 5}'
        % names.tasks_stream.encode()
    )
    assert Names.type_of_consumer(advisory.consumer) == "coder"
