"""Tasks published at a steady rate while a fault happens, and what came of them.

:func:`steady_load` publishes ``count`` echo tasks at ``rate`` per second, each
with its id as ``Nats-Msg-Id`` and retried with that id (as the gateway does)
until the stream acknowledges it, runs ``fault`` once ``fault_after`` seconds
in, then waits (bounded) until every acknowledged task is completed in Redis.
The report says what was lost and how long things stalled: the longest a publish
took to be stored, and the longest gap between two consecutive completions
(``finished_at`` of the task records) from the fault on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from foundry import codec
from foundry.connect import connect_nats, connect_redis
from foundry.contracts import TaskStatus
from foundry.settings import Settings

RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    asyncio.TimeoutError,
)


@dataclass
class LoadReport:
    count: int
    acked: int = 0
    publish_errors: int = 0  # attempts that failed and were retried
    lost: list[str] = field(default_factory=list)
    not_acked: list[str] = field(default_factory=list)
    slowest_publish: float = 0.0
    completion_stall: float = 0.0
    fault: dict[str, Any] = field(default_factory=dict)
    attempts_over_one: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "acked": self.acked,
            "lost": len(self.lost),
            "not_acked": len(self.not_acked),
            "publish_retries": self.publish_errors,
            "slowest_publish_s": round(self.slowest_publish, 3),
            "completion_stall_s": round(self.completion_stall, 3),
            "redelivered": self.attempts_over_one,
            **self.fault,
        }


async def publish_retrying(
    nc: NATS, subject: str, task_id: str, payload: bytes, budget: float, report: LoadReport
) -> bool:
    """Publish until stored (same ``Nats-Msg-Id`` every time), for at most ``budget`` s."""
    js = nc.jetstream()
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": task_id})
            return True
        except RETRYABLE:
            report.publish_errors += 1
            await asyncio.sleep(0.2)
        except nats.errors.ConnectionReconnectingError:
            report.publish_errors += 1
            await asyncio.sleep(0.1)
    return False


async def _statuses(redis: Any, settings: Settings, ids: list[str]) -> list[list[Any]]:
    names = settings.names
    out: list[list[Any]] = []
    for start in range(0, len(ids), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + 500]:
                pipe.hmget(names.task_key(task_id), "status", "finished_at", "attempts")
            out.extend(await pipe.execute())
    return out


async def steady_load(
    settings: Settings,
    agent_type: str,
    count: int,
    rate: float,
    fault: Callable[[], Awaitable[dict[str, Any]]],
    fault_after: float,
    settle_timeout: float = 60.0,
) -> LoadReport:
    report = LoadReport(count)
    nc = await connect_nats(settings, "load")
    redis = await connect_redis(settings)
    subject = settings.names.tasks(agent_type)
    ids = [f"load-{i}" for i in range(count)]
    fault_at = 0.0
    try:
        began = time.monotonic()

        async def one(i: int, task_id: str) -> None:
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            sent = time.monotonic()
            body = codec.dumps({"task_id": task_id, "description": "steady", "input": {"i": i}})
            if await publish_retrying(nc, subject, task_id, body, 30.0, report):
                report.acked += 1
                report.slowest_publish = max(report.slowest_publish, time.monotonic() - sent)
            else:
                report.not_acked.append(task_id)

        async def do_fault() -> None:
            nonlocal fault_at
            await asyncio.sleep(fault_after)
            fault_at = time.time()
            report.fault = await fault()

        publishers = [asyncio.create_task(one(i, t)) for i, t in enumerate(ids)]
        faulting = asyncio.create_task(do_fault())
        await asyncio.wait_for(asyncio.gather(*publishers, faulting), count / rate + 90)
        acked = [t for t in ids if t not in set(report.not_acked)]
        deadline = time.monotonic() + settle_timeout
        while True:
            rows = await _statuses(redis, settings, acked)
            done = [r for r in rows if r[0] == TaskStatus.COMPLETED.value.encode()]
            if len(done) == len(acked) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        report.lost = [t for t, r in zip(acked, rows, strict=True) if r[0] != b"completed"]
        report.attempts_over_one = sum(1 for r in rows if r[2] and int(r[2]) > 1)
        finished = sorted(float(r[1]) for r in rows if r[1])
        after = [t for t in finished if t >= fault_at - 1.0]
        gaps = [b - a for a, b in itertools.pairwise(after)]
        report.completion_stall = max(gaps, default=0.0)
        return report
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()
        with contextlib.suppress(Exception):
            await nc.close()
