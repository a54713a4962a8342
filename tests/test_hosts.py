"""Several hosts on one cluster: two healers side by side, and a whole host lost under load.

Two "hosts" here are two clones on one machine: two healers with their own
``FOUNDRY_HOST_ID``, data dir and fleet, on the suite's one NATS and one Redis
(loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from foundry import codec
from foundry.connect import connect_nats
from foundry.contracts import MSG_ID_HEADER
from foundry.pidfiles import recorded_process
from foundry.settings import Settings
from foundry.store import TaskStore
from tests.cluster import Events, start_healer, watch
from tests.conftest import Gateway, eventually
from tests.procs import ProcessGroup

HOSTS = ("host-a", "host-b")
HANDLER = {"echo": "tests.handlers:record"}


@contextlib.asynccontextmanager
async def cluster_streams(settings: Settings, procs: ProcessGroup) -> AsyncIterator[None]:
    """Stop the healers, then delete the streams they provisioned for ``settings``'
    namespace, as its own admin (JetStream reserves each stream's byte limit on the
    suite's shared server)."""
    try:
        yield
    finally:
        await asyncio.to_thread(procs.stop_all)
        conn = await connect_nats(settings, "test-cleanup")
        js = conn.jetstream()
        names = settings.names
        for stream in (names.tasks_stream, names.events_stream, names.dead_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await conn.close()


def host_settings(base: Settings, host: str, tmp_path: Path, **over: Any) -> Settings:
    """``base`` as seen from another host: its own id and data dir, the same cluster."""
    return dataclasses.replace(base, host_id=host, data_dir=tmp_path / host, **over)


async def healer_replies(nc: NATS, settings: Settings, within: float = 1.0) -> list[Any]:
    """Every healer's status reply (each healer answers the same request)."""
    inbox = nc.new_inbox()
    replies: list[Any] = []

    async def take(msg: Any) -> None:
        replies.append(codec.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=take)
    await nc.publish(settings.names.control("status"), b"{}", reply=inbox)
    await asyncio.sleep(within)
    await sub.unsubscribe()
    return replies


async def leaders(nc: NATS, settings: Settings) -> list[str]:
    """The hosts whose healer says it leads (holds the leader lease)."""
    return sorted(r["host_id"] for r in await healer_replies(nc, settings, 0.3) if r["leader"])


async def all_running(nc: NATS, settings: Settings, hosts: tuple[str, ...]) -> dict[str, Any]:
    """Slot name → slot, once every host's healer answers with all its workers running."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replies = await healer_replies(nc, settings, 0.5)
        by_host = {r.get("host_id"): r for r in replies}
        if set(hosts) <= set(by_host):
            workers = [s for r in replies for s in r["slots"] if s["kind"] == "worker"]
            if workers and all(s["state"] == "running" for s in workers):
                return {s["slot"]: {**s, "host": r["host_id"]} for r in replies for s in r["slots"]}
    raise AssertionError("the healers' workers did not all run in time")


async def publish_tasks(
    nc: NATS, store: TaskStore, settings: Settings, ids: list[str], sleep: float, every: float
) -> None:
    """Queue and publish ``ids`` one after another, ``every`` seconds apart."""
    js = nc.jetstream()
    for task_id in ids:
        await store.queue(task_id, "echo")
        body = codec.dumps({"description": "load", "input": {"sleep": sleep}})
        await js.publish(settings.names.tasks("echo"), body, headers={MSG_ID_HEADER: task_id})
        await asyncio.sleep(every)


async def finished(store: TaskStore, ids: list[str]) -> set[str]:
    done = set()
    for task_id in ids:
        record = await store.get(task_id)
        if record is not None and record.status == "completed":
            done.add(task_id)
    return done


async def get_json(gw: Gateway, path: str) -> Any:
    async with gw.http.get(gw.url(path)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def relaunches(events: Events) -> list[dict[str, Any]]:
    return [e for e in events.heal if e["kind"] in ("heal.relaunch", "heal.kill_silent")]


async def test_two_hosts_side_by_side_stay_calm_and_show_grouped(
    make_settings: Any,
    make_gateway: Any,
    nc: NATS,
    redis: Any,
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    # Given two hosts with the same fleet (two echo workers each) on one NATS and one Redis
    base = make_settings(fleet={"echo": 2}, handlers=HANDLER)
    store = TaskStore(redis, base.names, base.result_ttl)
    clones = [host_settings(base, host, tmp_path) for host in HOSTS]
    async with cluster_streams(base, procs), watch(nc, base) as events:
        for clone in clones:
            start_healer(procs, clone)
        before = await all_running(nc, base, HOSTS)
        gw = await make_gateway(clones[0])
        # When they run side by side for 60 s with a trickle of tasks
        ids = [f"calm-{n}" for n in range(240)]
        loader = asyncio.create_task(publish_tasks(nc, store, base, ids, 0.01, 0.25))
        await asyncio.sleep(60)
        await loader
        await eventually(lambda: _all_done(store, ids), 30)
        # Then no healer relaunched or killed anything, nor took the other's workers as silent
        assert relaunches(events) == [], relaunches(events)
        assert events.of("silent_foreign") == []
        after = await all_running(nc, base, HOSTS)
        workers = {n: s for n, s in after.items() if s["kind"] == "worker"}
        assert sorted(workers) == sorted(f"echo-{i}@{h}" for h in HOSTS for i in range(2))
        assert all(s["launches"] == 1 and s["pid"] == before[n]["pid"] for n, s in workers.items())
        # ... every beat came from the host its worker id names
        assert all(b["worker_id"].endswith("@" + b["host"]) for b in events.beats)
        # ... and the gateway shows both hosts, each with its own workers
        live = await get_json(gw, "/api/cluster/agents/live")
        assert live["hosts"] == {h: [f"echo-{i}@{h}" for i in range(2)] for h in HOSTS}
        assert all(a["status"] == "healthy" for a in live["agents"])
        status = await get_json(gw, "/api/cluster/status")
        assert status["total_workers"] == 4 and status["healthy_workers"] == 4
        for host in HOSTS:
            assert status["hosts"][host]["healthy_workers"] == 2
            assert status["hosts"][host]["healer"] == "running"
        tasks = sum(1 for b in events.beats if b["state"] == "busy")
        print(f"60 s side by side: {len(relaunches(events))} relaunches, {tasks} busy beats")


async def _all_done(store: TaskStore, ids: list[str]) -> bool:
    return len(await finished(store, ids)) == len(ids)


async def test_a_lost_host_loses_nothing(
    make_settings: Any,
    make_gateway: Any,
    nc: NATS,
    redis: Any,
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    # Given two hosts of two echo workers each, and 800 tasks published continuously
    base = make_settings(fleet={"echo": 2}, handlers=HANDLER, ack_wait=30.0, concurrency=4)
    store = TaskStore(redis, base.names, base.result_ttl)
    host_a, host_b = (host_settings(base, host, tmp_path) for host in HOSTS)
    async with cluster_streams(base, procs), watch(nc, base) as events:
        start_healer(procs, host_a)
        # (host A leads: a surviving leader naks at once; a lost one is replaced first)
        await eventually(lambda: _leader_is(nc, base, "host-a"), 30)
        healer_b = start_healer(procs, host_b)
        await all_running(nc, base, HOSTS)
        gw = await make_gateway(host_a)
        ids = [f"load-{n}" for n in range(800)]
        loader = asyncio.create_task(publish_tasks(nc, store, base, ids, 0.2, 0.01))
        # When every process of host B (its healer and its workers) is killed mid-load
        await eventually(lambda: _b_holds_tasks(events), 30)
        victims = [healer_b.pid, *_recorded_pids(host_b.data_dir / "run")]
        held = _held_by_b(events)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        held = sorted(set(held) - await finished(store, held))  # B had not finished these
        # Then the others show B's workers down within the silence timeout + 1 s ...
        bound = base.silence_timeout + 1.0
        down = await eventually(lambda: _b_down(gw), bound + 5)
        down_in = time.time() - killed_at
        # ... the tasks B held are redelivered (nak'ed by host A's healer) within the bound ...
        foreign = await eventually(lambda: events.of("silent_foreign") or None, bound + 5)
        redelivered_in = max(e["at"] for e in foreign) - killed_at
        assert {e["worker_id"] for e in foreign} <= {f"echo-{i}@host-b" for i in range(2)}
        assert all(e["host"] == "host-a" for e in foreign)
        # ... and every one of the 800 tasks completes: nothing is lost
        await loader
        await eventually(lambda: _all_done(store, ids), 90)
        ran_elsewhere = await _completed_after(store, held, killed_at)
        assert ran_elsewhere >= 0
        print(
            f"host lost: 0 of {len(ids)} lost; B's workers shown down in {down_in:.2f}s "
            f"({down}), {len(held)} held tasks nak'ed in {redelivered_in:.2f}s and all ran "
            f"elsewhere within {ran_elsewhere:.2f}s of the kill (bound {bound:.1f}s)"
        )
        assert down_in <= bound + 0.5, down_in  # the view is polled: allow one poll's slack
        assert redelivered_in <= bound, redelivered_in


async def _leader_is(nc: NATS, settings: Settings, host: str) -> bool:
    return await leaders(nc, settings) == [host]


def _last_beats_of_b(events: Events) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for beat in events.beats:
        if beat["host"] == "host-b":
            last[beat["worker_id"]] = beat
    return last


def _b_holds_tasks(events: Events) -> bool:
    return sum(len(b["in_flight"]) for b in _last_beats_of_b(events).values()) >= 4


def _held_by_b(events: Events) -> list[str]:
    return [e["task_id"] for b in _last_beats_of_b(events).values() for e in b["in_flight"]]


async def _b_down(gw: Gateway) -> str | None:
    live = await get_json(gw, "/api/cluster/agents/live")
    rows = [a for a in live["agents"] if a["host"] == "host-b"]
    if rows and all(a["status"] != "healthy" for a in rows):
        return ", ".join(f"{a['worker_id']} {a['status']}" for a in rows)
    return None


async def _completed_after(store: TaskStore, ids: list[str], since: float) -> float:
    """Seconds from ``since`` until the last of ``ids`` completed (each ran again elsewhere)."""
    latest = since
    for task_id in ids:
        record = await store.get(task_id)
        assert record is not None and record.status == "completed", (task_id, record)
        assert (record.worker_id or "").endswith("@host-a"), record  # ran on the other host
        latest = max(latest, float(record.finished_at or since))
    return latest - since


def _recorded_pids(run_dir: Path) -> list[int]:
    """The pids of the processes a healer recorded in its run dir (its workers)."""
    procs = (recorded_process(path) for path in sorted(run_dir.glob("*.json")))
    return [p.pid for p in procs if p is not None]
