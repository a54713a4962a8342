"""Latency at a fixed offered load, open loop, from each task's scheduled send time.

Task i is due at ``t0 + i / rate`` and is sent then, whatever happened to
earlier tasks; its latency runs from that due time (not from when it was
actually sent) to its completion notice, so a stalled sender or a backlog
shows up in the figures instead of hiding (no coordinated omission).

For Foundry the task records' ``started_at`` / ``finished_at`` split each
latency into stages: due → claimed by a worker, claimed → result stored,
stored → completion event received.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.stats import summary
from bench.workload import Completions, Target, make_tasks, publish, settle


@dataclass
class Latency:
    system: str
    rate: float
    seconds: float
    sent: int
    completed: int
    latency_ms: dict[str, float]
    send_lag_ms: dict[str, float]
    publish_failures: int
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    client_gc_pause_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def quiet_gc(pauses: list[float]) -> Iterator[None]:
    """Keep the client's own garbage collector from adding pauses to the figures.

    Everything alive before the phase is frozen (never scanned again), and every
    collection that still happens is timed into ``pauses`` (ms) for the report.
    """
    started: list[float] = []

    def timer(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((time.perf_counter() - started.pop()) * 1000)

    gc.collect()
    gc.freeze()
    gc.callbacks.append(timer)
    try:
        yield
    finally:
        gc.callbacks.remove(timer)
        gc.unfreeze()


async def run(
    nc: NATS,
    js: JetStreamContext,
    redis: aioredis.Redis,
    target: Target,
    rate: float,
    seconds: float,
    prefix: str,
    drain: float = 10.0,
) -> Latency:
    tasks = make_tasks(prefix, max(1, int(rate * seconds)))
    ids = [task_id for task_id, _ in tasks]
    completions = await Completions(target.parse_done).start(nc, target.done_subject)
    completions.expect(ids)
    futures: list[Any] = []
    lags: list[float] = []
    pauses: list[float] = []
    wall_offset = time.time() - time.perf_counter()
    t0 = time.perf_counter() + 0.05
    try:
        with quiet_gc(pauses):
            i = 0
            while i < len(tasks):
                now = time.perf_counter()
                while i < len(tasks) and t0 + i / rate <= now:
                    task_id, data = tasks[i]
                    lags.append(time.perf_counter() - (t0 + i / rate))
                    futures.append(await publish(js, target.subject, task_id, data))
                    i += 1
                if i < len(tasks):
                    await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            await completions.wait(drain)
        failures = await settle(futures, 5.0)
    finally:
        await completions.stop()
    latencies = [
        (completions.first[task_id] - (t0 + n / rate)) * 1000
        for n, task_id in enumerate(ids)
        if task_id in completions.first
    ]
    stages: dict[str, dict[str, float]] = {}
    if target.timeline_of is not None:
        stages = await _stages(redis, target, ids, t0, rate, wall_offset, completions.first)
    return Latency(
        system=target.name,
        rate=rate,
        seconds=seconds,
        sent=len(tasks),
        completed=len(latencies),
        latency_ms=summary(latencies),
        send_lag_ms=summary([x * 1000 for x in lags]),
        publish_failures=failures,
        stages_ms=stages,
        client_gc_pause_ms=summary(pauses),
    )


async def _stages(
    redis: aioredis.Redis,
    target: Target,
    ids: list[str],
    t0: float,
    rate: float,
    wall_offset: float,
    done: dict[str, float],
) -> dict[str, dict[str, float]]:
    assert target.timeline_of is not None
    timeline = await target.timeline_of(redis, ids)
    to_start, running, to_notice = [], [], []
    for n, (task_id, times) in enumerate(zip(ids, timeline, strict=True)):
        if times is None or task_id not in done:
            continue
        due = t0 + n / rate + wall_offset
        started, finished = times
        to_start.append((started - due) * 1000)
        running.append((finished - started) * 1000)
        to_notice.append((done[task_id] + wall_offset - finished) * 1000)
    return {
        "due_to_claimed": summary(to_start),
        "claimed_to_stored": summary(running),
        "stored_to_notice": summary(to_notice),
    }
