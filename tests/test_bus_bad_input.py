"""Hostile and malformed messages on the bus, for every message kind, against a real cluster.

Each shape is published by a plain NATS client. Afterwards: no endpoint answers
500, every loop still runs (the healer still answers control, still relaunches a
killed worker), worker concurrency is unchanged, a running task is not
dead-lettered by a forged advisory, and the rejection counter moved.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from nats.aio.client import Client as NATS

from foundry import codec
from foundry.settings import Settings
from tests.cluster import slots, start_healer, wait_running
from tests.conftest import TEST_HOST, Gateway, eventually
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task
from tests.test_monitor import make_monitor, parse_metrics

__all__ = ["make_monitor"]  # the fixture is used by name

HOST = TEST_HOST


def beat(
    worker_id: str = "coder-0@host-a", agent_type: str = "coder", **over: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "worker_id": worker_id,
        "agent_type": agent_type,
        "host": HOST,
        "pid": 4242,
        "slot": 0,
        "state": "idle",
        "in_flight": [],
        "started_at": time.time(),
    }
    body.update(over)
    return body


def entry(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": "t1",
        "stream_seq": 1,
        "reply": "$JS.ACK.X.workers-coder.1.1.1.1.0",
        "delivery": 1,
        "started_at": time.time(),
    }
    body.update(over)
    return body


def hostile_heartbeats(real_pid: int) -> list[tuple[str, bytes]]:
    """(worker id in the subject, payload) pairs; all must be dropped."""
    shapes: list[tuple[str, Any]] = [
        ("x.y", {**beat("7"), "worker_id": 7, "slot": None, "pid": 1, "started_at": "x"}),
        ("coder-0@host-a", beat(pid=0)),  # the forged-silence attack: a pid no one launched
        ("coder-0@host-a", beat(pid=real_pid + 1)),  # someone else's pid for our slot
        ("coder-0@host-a", beat(pid=real_pid, host="elsewhere")),  # our pid from another host
        ("coder-0@host-a", beat(state="exploding")),
        ("coder-0@host-a", beat(started_at=float("nan"))),
        ("coder-0@host-a", beat(processed=10**30)),
        ("coder-0@host-a", beat(in_flight=[entry()] * 5000)),
        ("coder-0@host-a", beat(in_flight=[entry(reply="agents.control.heal")])),
        ("coder-0@host-a", beat(in_flight=["not an object"])),
        ("coder-0@host-a", beat(task_seconds_buckets=[1, 2, 3])),
        ("someone-else", beat()),  # worker id disagrees with the subject
        ("coder-0@host-a", [1, 2, 3]),
        ("coder-0@host-a", "not json"),
    ]
    out = []
    for subject_id, body in shapes:
        # the stdlib encoder writes what orjson refuses: NaN, integers past 64 bits
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        out.append((subject_id, raw))
    out.append(("coder-0@host-a", b'{"worker_id": "coder-0@host-a", "pid": 1e400}'))
    out.append(("coder-0@host-a", b"\xff\xfe"))
    return out


async def test_malformed_and_forged_messages_are_dropped_and_counted(
    make_settings: Any,
    nc: NATS,
    make_gateway: Any,
    make_monitor: Any,
    procs: ProcessGroup,
) -> None:
    # Given a healer with two echo workers, a gateway and a monitor
    settings: Settings = make_settings(
        fleet={"coder": 1, "executor": 1}, handlers={"coder": "echo", "executor": "echo"}
    )
    names = settings.names
    start_healer(procs, settings)
    before = await wait_running(nc, settings)
    gw: Gateway = await make_gateway(settings)
    mon = await make_monitor(settings)
    real_pid = int(before["coder-0@host-a"]["pid"])
    running_id = "long-running-1"
    await submit(gw, agent_type="executor", description="x", task_id=running_id)
    assert (await wait_task(gw, running_id))["status"] == "completed"

    # When every kind of hostile message is published, several times over
    for _ in range(3):
        for subject_id, raw in hostile_heartbeats(real_pid):
            subject = f"{names.root}.heartbeat.coder.{subject_id}"
            await nc.publish(subject, raw)
        await nc.publish(names.task_event("completed", "coder"), b'{"task_id": 7}')
        await nc.publish(names.task_event("queued", "coder"), b"[]")
        await nc.publish(names.heal_event("relaunch"), b'{"kind": "heal.nonsense"}')
        await nc.publish(names.heal_event("relaunch"), b'{"detect_seconds": -1e308}')
        await nc.publish(names.host(HOST), b'{"host": "h", "cpu_percent": "hot"}')
        await nc.publish(names.host(HOST), codec.dumps({"host": HOST, "at": time.time()}))
        for level in (100000, 0, -5, "x", True):
            await nc.publish(names.worker_control("executor"), codec.dumps({"concurrency": level}))
        await nc.publish(names.worker_control("executor"), b"{}")
        advisory = {"stream": names.tasks_stream, "consumer": "workers-executor",
                    "stream_seq": 1, "deliveries": 99}  # fmt: skip
        await nc.publish(names.max_deliveries_advisory("executor"), codec.dumps(advisory))
        await nc.publish(names.max_deliveries_advisory("executor"), b'{"stream_seq": "x"}')
    await nc.flush()

    # Then control requests with bad bodies get an error reply naming the problem
    reply = codec.loads((await nc.request(names.control("release"), b"[1]", timeout=5)).data)
    assert reply["code"] == "bad_request" and "JSON object" in reply["error"]
    reply = codec.loads(
        (await nc.request(names.control("release"), b'{"worker_id": "a b"}', timeout=5)).data
    )
    assert reply["code"] == "bad_request" and "worker_id" in reply["error"]
    reply = codec.loads(
        (
            await nc.request(
                names.control("release"), b'{"worker_id": "coder-0@host-a"}', timeout=5
            )
        ).data
    )
    assert reply["code"] == "conflict"

    # and no endpoint answers 500
    for path in ("/api/cluster/status", "/api/cluster/agents/live", "/health"):
        async with gw.http.get(gw.url(path)) as resp:
            assert resp.status == 200, (path, await resp.text())
    async with gw.http.get(gw.url("/api/cluster/agents/live")) as resp:
        agents = (await resp.json())["agents"]
    assert {a["worker_id"] for a in agents} == {"coder-0@host-a", "executor-0@host-a"}
    assert next(a for a in agents if a["worker_id"] == "coder-0@host-a")["pid"] == real_pid

    # and the monitor counted the rejections and still scrapes
    async def counted() -> dict[str, float]:
        async with mon.http.get(mon.url("/metrics")) as resp:
            assert resp.status == 200
            samples = parse_metrics(await resp.text())
        kinds: dict[str, float] = {}
        for (name, labels), n in samples.items():
            if name == "foundry_messages_rejected_total":
                kind = dict(labels)["kind"]
                kinds[kind] = kinds.get(kind, 0) + n
        return kinds if {"heartbeat", "heal_event"} <= set(kinds) else {}

    kinds = await eventually(counted, 15, interval=0.2)
    assert kinds["heartbeat"] >= 3 * 10

    # and the forged advisory dead-lettered nothing, the forged beats killed nothing
    assert (await wait_task(gw, running_id, wait=0))["status"] == "completed"
    now = await slots(nc, settings)
    assert now["coder-0@host-a"]["pid"] == real_pid and now["coder-0@host-a"]["launches"] == 1
    assert now["executor-0@host-a"]["launches"] == 1

    # and the workers kept their concurrency (heartbeats say so)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_beat(msg: Any) -> None:
        body = codec.loads(msg.data)
        if not seen.done() and body.get("sent_at", 0) > time.time() - 1:
            seen.set_result(int(body["concurrency"]))

    sub = await nc.subscribe(names.heartbeat("executor", "executor-0@host-a"), cb=on_beat)
    assert await asyncio.wait_for(seen, 10) == settings.concurrency
    await sub.unsubscribe()

    # and the healer's loops still run: a killed worker is relaunched
    os.kill(real_pid, signal.SIGKILL)

    async def relaunched() -> bool:
        current = await slots(nc, settings)
        return current["coder-0@host-a"]["pid"] not in (None, real_pid) and (
            current["coder-0@host-a"]["state"] == "running"
        )

    await eventually(relaunched, 20, interval=0.1)
    await submit(gw, agent_type="coder", description="after", task_id="after-hostile")
    assert (await wait_task(gw, "after-hostile"))["status"] == "completed"
