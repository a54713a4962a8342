"""Healing: kill -9 → replacement heartbeat, SIGSTOP → replacement, and kills under load.

Times run from the signal to the first heartbeat of the slot's new process, as
the bench's own NATS subscription receives it; the healer's heal events split
that into reaction (signal → relaunch decision) and start-up (relaunch → beat).
Before each kill the victim has run at least ``FOUNDRY_STABLE_AFTER``, so every
kill is a first failure (relaunched at once) rather than a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench.cluster import FoundryCluster
from bench.stats import summary
from bench.workload import Completions, Counter, make_tasks, publish_all
from foundry import codec
from foundry.contracts import TaskStatus

COMPLETED = TaskStatus.COMPLETED


@dataclass
class HealEvents:
    """Heal events as received: (perf_counter, body)."""

    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            self.seen.append((time.perf_counter(), codec.loads(msg.data)))

    def first(self, kind: str, after: float, **match: Any) -> float | None:
        for at, body in self.seen:
            if at >= after and body.get("kind") == kind:
                if all(body.get(k) == v for k, v in match.items()):
                    return at
        return None


async def _settled_pid(cluster: FoundryCluster, worker_id: str) -> int:
    """The slot's current pid, once it has run longer than FOUNDRY_STABLE_AFTER."""
    pid = cluster.beats.latest[worker_id]
    first = cluster.beats.first[(worker_id, pid)]
    wait = first + cluster.options.stable_after + 0.1 - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)
    return cluster.beats.latest[worker_id]


async def kill9(cluster: FoundryCluster, events: HealEvents, count: int) -> dict[str, Any]:
    """``count`` kill -9s, alternating slots; each waits for the replacement's beat."""
    rows: list[dict[str, Any]] = []
    ids = cluster.worker_ids()
    for n in range(count):
        worker_id = ids[n % len(ids)]
        pid = await _settled_pid(cluster, worker_id)
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        new_pid, beat_at = await cluster.beats.new_pid(worker_id, pid, killed, timeout=20)
        relaunch = events.first("heal.relaunch", killed, slot=worker_id, old_pid=pid)
        rows.append(
            {
                "slot": worker_id,
                "old_pid": pid,
                "new_pid": new_pid,
                "seconds": round(beat_at - killed, 4),
                "relaunch_event_seconds": round(relaunch - killed, 4) if relaunch else None,
            }
        )
    return {"kills": rows, "seconds": summary([r["seconds"] for r in rows], 4)}


async def sigstop(cluster: FoundryCluster, events: HealEvents, count: int) -> dict[str, Any]:
    """SIGSTOP a worker (hung: no beats) and time until a new process beats for its slot."""
    rows: list[dict[str, Any]] = []
    ids = cluster.worker_ids()
    for n in range(count):
        worker_id = ids[n % len(ids)]
        pid = await _settled_pid(cluster, worker_id)
        victim = psutil.Process(pid)
        stopped = time.perf_counter()
        os.kill(pid, signal.SIGSTOP)
        try:
            limit = cluster.options.silence_timeout + 20
            new_pid, beat_at = await cluster.beats.new_pid(worker_id, pid, stopped, limit)
        finally:
            with contextlib.suppress(psutil.Error):
                if victim.is_running():  # the healer should have killed it; make sure
                    victim.send_signal(signal.SIGCONT)
                    victim.kill()
        detected = events.first("heal.kill_silent", stopped, slot=worker_id)
        relaunch = events.first("heal.relaunch", stopped, slot=worker_id, old_pid=pid)
        rows.append(
            {
                "slot": worker_id,
                "old_pid": pid,
                "new_pid": new_pid,
                "seconds": round(beat_at - stopped, 4),
                "kill_silent_event_seconds": round(detected - stopped, 4) if detected else None,
                "relaunch_event_seconds": round(relaunch - stopped, 4) if relaunch else None,
            }
        )
    return {
        "stops": rows,
        "seconds": summary([r["seconds"] for r in rows], 4),
        "silence_timeout": cluster.options.silence_timeout,
        "heartbeat_interval": cluster.options.heartbeat_interval,
    }


async def under_load(
    nc: NATS,
    js: JetStreamContext,
    redis: aioredis.Redis,
    cluster: FoundryCluster,
    tasks: int,
    kills: int,
) -> dict[str, Any]:
    """Kill -9 workers while ``tasks`` run; count lost tasks and duplicate executions."""
    target = cluster.target
    assert target.running_subject is not None
    batch = make_tasks("kul", tasks)
    ids = [task_id for task_id, _ in batch]
    completions = await Completions(target.parse_done).start(nc, target.done_subject)
    running = await Counter(target.parse_done).start(nc, target.running_subject)
    completions.expect(ids)
    worker_ids = cluster.worker_ids()
    for worker_id in worker_ids:
        await _settled_pid(cluster, worker_id)
    started = time.perf_counter()
    publisher = asyncio.create_task(publish_all(js, target.subject, batch))
    killed_at: list[float] = []
    try:
        for n in range(kills):
            await completions.wait_count(tasks * (n + 1) // (kills + 1), 30.0)
            worker_id = worker_ids[n % len(worker_ids)]
            with contextlib.suppress(ProcessLookupError):
                os.kill(cluster.beats.latest[worker_id], signal.SIGKILL)
                killed_at.append(time.perf_counter())
        failures = await publisher
        silent = await _wait_done(redis, cluster, completions, ids, cluster.options.ack_wait + 30)
    finally:
        if not publisher.done():
            publisher.cancel()
        await completions.stop()
        await running.stop()
    done_at = {**silent, **completions.first}
    finished = list(done_at.values())
    statuses, attempts = await _records(redis, cluster, ids)
    lost = sum(1 for s in statuses if s != COMPLETED)
    # redelivered tasks that came back only when ack_wait ran out, not at once by the healer
    slow = 0.8 * cluster.options.ack_wait
    waited = sum(
        1
        for task_id, tries in zip(ids, attempts, strict=True)
        if tries > 1
        and task_id in done_at
        and done_at[task_id] - max((k for k in killed_at if k < done_at[task_id]), default=0.0)
        >= slow
    )
    return {
        "redelivered_after_ack_wait": waited,
        "ack_wait": cluster.options.ack_wait,
        # completed in Redis, but no completion event ever came (see _wait_done)
        "completed_without_event": len(silent),
        "tasks": tasks,
        "kills": len(killed_at),
        "publish_failures": failures,
        "completed": sum(1 for s in statuses if s == COMPLETED),
        "lost": lost,
        "failed": sum(1 for s in statuses if s == "failed"),
        "redelivered": sum(1 for a in attempts if a > 1),
        "executed_twice_or_more": sum(1 for c in running.seen.values() if c > 1),
        "duplicate_completions": completions.duplicates,
        "seconds": round((max(finished) if finished else time.perf_counter()) - started, 3),
        "last_kill_to_last_completion_seconds": (
            round(max(finished) - killed_at[-1], 3) if finished and killed_at else None
        ),
    }


async def _wait_done(
    redis: aioredis.Redis,
    cluster: FoundryCluster,
    completions: Completions,
    ids: list[str],
    timeout: float,
) -> dict[str, float]:
    """Wait until every task completed: by its event, or else as its Redis record says.

    A worker killed between storing a result and publishing its event leaves a
    task whose redelivery finds it final and acks it without an event; polling
    Redis for the stragglers finds those instead of waiting out the timeout.
    Returns them, with when the poll saw them completed.
    """
    deadline = time.perf_counter() + timeout
    silent: dict[str, float] = {}
    while time.perf_counter() < deadline:
        if await completions.wait(0.5):
            return silent
        waiting = [i for i in ids if i not in completions.first and i not in silent]
        statuses = await cluster.target.status_of(redis, waiting)
        now = time.perf_counter()
        for task_id, status in zip(waiting, statuses, strict=True):
            if status == COMPLETED and task_id not in completions.first:
                silent[task_id] = now
        if len(silent) + len(completions.first) >= len(ids):
            return silent
    return silent


async def _records(
    redis: aioredis.Redis, cluster: FoundryCluster, ids: list[str]
) -> tuple[list[str | None], list[int]]:
    statuses: list[str | None] = []
    attempts: list[int] = []
    for start in range(0, len(ids), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + 2000]:
                pipe.hmget(cluster.names.task_key(task_id), "status", "attempts")
            for status, tries in await pipe.execute():
                statuses.append(status.decode() if status else None)
                attempts.append(int(tries) if tries else 0)
    return statuses, attempts
