"""Faults: a worker killed mid-task, Redis stopped mid-task or at a worker's start, SIGTERM
drain, broker down."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from foundry import codec
from foundry.connect import connect_nats
from foundry.provision import provision
from foundry.settings import Settings
from tests.bus import AuthNats, AuthRedis
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task


def started(marks: Path, task_id: str) -> list[str]:
    return sorted(p.name for p in marks.glob(f"{task_id}.start.*"))


async def test_killed_worker_task_is_redelivered(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given two blocking workers and a short ack_wait
    settings = make_settings(ack_wait=1.5, handlers={"coder": "tests.handlers:block"})
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    gw = await make_gateway(settings)
    first = procs.worker(settings, "coder")
    await submit(
        gw,
        agent_type="coder",
        description="hold",
        task_id="held-1",
        input={"marks": str(marks), "release": str(release)},
    )
    await eventually(lambda: started(marks, "held-1"), 15)
    holder = int(started(marks, "held-1")[0].split(".")[2])
    assert holder == first.pid
    # When the worker holding it is SIGKILLed and another worker is running
    second = procs.worker(settings, "coder")
    os.kill(first.pid, signal.SIGKILL)
    release.touch()
    # Then the task is redelivered to the other worker and completes
    rec = await wait_task(gw, "held-1", wait=30)
    assert rec["status"] == "completed", procs.logs()
    assert rec["result"]["pid"] == second.pid
    assert rec["attempts"] == 2


async def test_redis_outage_mid_task_is_not_acked_and_completes_later(
    make_settings: Any,
    make_gateway: Any,
    procs: ProcessGroup,
    own_redis: AuthRedis,
    tmp_path: Path,
) -> None:
    # Given a worker on its own redis-server, holding a task
    settings = make_settings(
        redis_url=own_redis.url,
        ack_wait=2.0,
        handlers={"coder": "tests.handlers:block"},
        cache_wait=120.0,
    )
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    gw = await make_gateway(settings)
    procs.worker(settings, "coder")
    await submit(
        gw,
        agent_type="coder",
        description="hold",
        task_id="r-1",
        input={"marks": str(marks), "release": str(release)},
    )
    await eventually(lambda: started(marks, "r-1"), 15)
    # When Redis stops while the task runs, and the handler then finishes
    own_redis.stop()
    release.touch()
    nc = await connect_nats(settings, "test")
    js = nc.jetstream()
    try:
        # Then the gateway says Redis is down (503, not a trace) ...
        async with gw.http.get(gw.url("/api/cluster/task/r-1")) as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["error"] == "redis_unavailable" and body["service"] == "redis"
        async with gw.http.get(gw.url("/health")) as resp:
            assert resp.status == 503 and (await resp.json())["redis"] == "unreachable"
        # ... and the task is held, not acked, well past ack_wait
        await asyncio.sleep(settings.ack_wait * 2)
        info = await js.consumer_info(settings.names.tasks_stream, "workers-coder")
        assert info.num_ack_pending == 1 and info.num_redelivered == 0
        # When Redis comes back, the result is stored and the task acked
        own_redis.start()
        rec = await wait_task(gw, "r-1", wait=30)
        assert rec["status"] == "completed", procs.logs()
        info = await eventually(lambda: _drained(js, settings), 15)
        assert info
    finally:
        await nc.close()


async def _drained(js: Any, settings: Settings) -> bool:
    info = await js.consumer_info(settings.names.tasks_stream, "workers-coder")
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def test_sigterm_drains_in_flight_work_and_exits_zero(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker running three tasks that each take a second
    settings = make_settings(handlers={"coder": "tests.handlers:record"}, drain_timeout=15.0)
    marks = tmp_path / "marks"
    marks.mkdir()
    gw = await make_gateway(settings)
    proc = procs.worker(settings, "coder")
    ids = [f"drain-{i}" for i in range(3)]
    for tid in ids:
        await submit(
            gw,
            agent_type="coder",
            description="slow",
            task_id=tid,
            input={"marks": str(marks), "sleep": 1.0},
        )
    await eventually(lambda: len(list(marks.iterdir())) == 3, 15)
    # When it gets SIGTERM mid-task
    proc.send_signal(signal.SIGTERM)
    # Then it finishes the in-flight tasks and exits 0
    assert await asyncio.to_thread(proc.wait, 20) == 0, procs.logs()
    for tid in ids:
        rec = await wait_task(gw, tid, wait=1)
        assert rec["status"] == "completed", rec


async def test_nats_down_gives_503_naming_nats(
    make_settings: Any, make_gateway: Any, own_nats: AuthNats, redis: Any
) -> None:
    # Given a gateway on its own nats-server
    settings = make_settings(bus=own_nats)
    gw = await make_gateway(settings)
    # When the broker stops
    own_nats.stop()
    await asyncio.sleep(0.3)
    # Then submissions and health say NATS is unreachable, with a 503
    async with gw.http.post(
        gw.url("/api/cluster/task/submit"),
        json={"agent_type": "coder", "description": "x", "task_id": "n-1"},
    ) as r:
        assert r.status == 503
        body = await r.json()
        assert body["error"] == "nats_unavailable"
    async with gw.http.get(gw.url("/health")) as resp:
        assert resp.status == 503
        assert (await resp.json())["nats"] == "unreachable"
    # and the refused submission left no record behind
    async with gw.http.get(gw.url("/api/cluster/task/n-1")) as resp:
        assert resp.status == 404
    # When the broker returns, submissions work again
    own_nats.start()
    await eventually(lambda: _healthy(gw), 20, interval=0.2)


async def _healthy(gw: Any) -> bool:
    async with gw.http.get(gw.url("/health")) as resp:
        return bool(resp.status == 200)


async def test_a_worker_waiting_for_redis_at_start_beats_starting_then_serves(
    make_settings: Any, procs: ProcessGroup, own_redis: AuthRedis
) -> None:
    # Given Redis down when a worker starts
    settings = make_settings(redis_url=own_redis.url, connect_timeout=30.0)
    nc = await connect_nats(settings, "test")
    await provision(nc.jetstream(), settings)  # as the healer does before its workers start
    states: list[str] = []

    async def on_beat(msg: Any) -> None:
        states.append(codec.loads(msg.data)["state"])

    await nc.subscribe(settings.names.heartbeat("coder", "*"), cb=on_beat)
    try:
        own_redis.stop()
        worker = procs.worker(settings, "coder")
        # Then it beats while it waits (alive, "starting"), so a healer never takes the
        # wait for a hang
        await eventually(lambda: states.count("starting") >= 3, 20)
        assert set(states) == {"starting"}, states
        # When Redis comes back, Then it serves
        own_redis.start()
        await eventually(lambda: "idle" in states or worker.poll() is not None, 30)
        assert "idle" in states, procs.logs()
        assert worker.poll() is None, procs.logs()
    finally:
        await nc.close()
