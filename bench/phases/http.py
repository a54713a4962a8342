"""Throughput through the gateway: concurrent keep-alive clients POST tasks until N are in.

Each client sends its next submission when the previous one is answered
(closed loop). Reported: completed tasks per second (clock stops at the last
completion event, as for NATS), accepted submissions per second, and the
submit request's own latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from bench.httpload import Connection
from bench.stats import summary
from bench.workload import DESCRIPTION, INPUT_DATA, Completions, Target, missing
from foundry import codec

SUBMIT_PATH = "/api/cluster/task/submit"


@dataclass
class HttpThroughput:
    tasks: int
    clients: int
    seconds: float
    accept_seconds: float
    accepted: int
    completed: int
    missing: int
    statuses: dict[str, int]
    submit_latency_ms: dict[str, float]
    errors: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def accepted_per_second(self) -> float:
        return self.accepted / self.accept_seconds if self.accept_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks_per_second"] = round(self.per_second, 1)
        out["accepted_per_second"] = round(self.accepted_per_second, 1)
        return out


def bodies(prefix: str, count: int, agent_type: str) -> list[tuple[str, bytes]]:
    out = []
    for n in range(count):
        task_id = f"{prefix}-{n}"
        body = {
            "agent_type": agent_type,
            "task_id": task_id,
            "description": DESCRIPTION,
            "input": {"n": n, "data": INPUT_DATA},
        }
        out.append((task_id, codec.dumps(body)))
    return out


async def run(
    nc: NATS,
    redis: aioredis.Redis,
    target: Target,
    gateway: tuple[str, int],
    tasks: list[tuple[str, bytes]],
    clients: int,
    timeout: float | None = None,
    token: str = "",
) -> HttpThroughput:
    limit = timeout if timeout is not None else 30.0 + len(tasks) / 300
    host, port = gateway
    conns = [Connection(host, port, token) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    completions = await Completions(target.parse_done).start(nc, target.done_subject)
    statuses: dict[str, int] = {}
    accepted: list[str] = []
    latencies: list[float] = []
    errors = 0
    cursor = iter(tasks)

    async def client(conn: Connection) -> None:
        nonlocal errors
        for task_id, body in cursor:
            sent = time.perf_counter()
            try:
                status, _ = await conn.request("POST", SUBMIT_PATH, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 202:
                accepted.append(task_id)

    try:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(c) for c in conns)), limit)
        accept_seconds = time.perf_counter() - started
        completions.expect(accepted)
        await completions.wait(max(1.0, limit - accept_seconds))
        times = [completions.first[i] for i in accepted if i in completions.first]
        seconds = (max(times) - started) if times else time.perf_counter() - started
    finally:
        await completions.stop()
        await asyncio.gather(*(c.close() for c in conns))
    lost = await missing(redis, target, accepted)
    return HttpThroughput(
        tasks=len(tasks),
        clients=clients,
        seconds=round(seconds, 4),
        accept_seconds=round(accept_seconds, 4),
        accepted=len(accepted),
        completed=len(times),
        missing=len(lost),
        statuses=statuses,
        submit_latency_ms=summary([x * 1000 for x in latencies]),
        errors=errors,
    )
