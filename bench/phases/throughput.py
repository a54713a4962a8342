"""Throughput through NATS: publish N tasks as fast as JetStream takes them, time until all done.

The clock starts before the first publish and stops at the last completion
notice; publishing overlaps with processing, as it does for a real producer.
The same function measures the raw baseline and Foundry.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.workload import Completions, Target, missing, publish_all


@dataclass
class Throughput:
    system: str
    tasks: int
    seconds: float
    submit_seconds: float
    completed: int
    missing: int
    publish_failures: int
    duplicate_notices: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks_per_second"] = round(self.per_second, 1)
        return out


async def run(
    nc: NATS,
    js: JetStreamContext,
    redis: aioredis.Redis,
    target: Target,
    tasks: list[tuple[str, bytes]],
    timeout: float | None = None,
) -> Throughput:
    """Submit ``tasks`` to ``target`` and time them to the last completion."""
    limit = timeout if timeout is not None else 30.0 + len(tasks) / 500
    completions = await Completions(target.parse_done).start(nc, target.done_subject)
    ids = [task_id for task_id, _ in tasks]
    completions.expect(ids)
    try:
        started = time.perf_counter()
        failures = await publish_all(js, target.subject, tasks, timeout=limit)
        submitted = time.perf_counter() - started
        await completions.wait(max(1.0, limit - submitted))
        times = [completions.first[i] for i in ids if i in completions.first]
        seconds = (max(times) - started) if times else time.perf_counter() - started
    finally:
        await completions.stop()
    lost = await missing(redis, target, ids)
    return Throughput(
        system=target.name,
        tasks=len(tasks),
        seconds=round(seconds, 4),
        submit_seconds=round(submitted, 4),
        completed=len(times),
        missing=len(lost),
        publish_failures=failures,
        duplicate_notices=completions.duplicates,
    )
