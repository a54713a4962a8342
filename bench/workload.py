"""Tasks, submission over NATS, and completion tracking — the same for the baseline and Foundry.

A task is the JSON object any NATS client may publish (``task_id``,
``description``, ``input``) with ``Nats-Msg-Id`` set to its id. A task counts as
completed when its completion notice reaches the client (Foundry: the
``task.completed`` event, published after the result is stored; baseline: a
core message published after the result is stored); the result's presence in
Redis is then checked for every task, the same way for both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from foundry import codec
from foundry.contracts import MSG_ID_HEADER, TaskStatus
from foundry.names import Names

COMPLETED, RUNNING = TaskStatus.COMPLETED, TaskStatus.RUNNING

DESCRIPTION = "benchmark echo task"
INPUT_DATA = "x" * 64  # with the id and description: a ~140-byte task


def payload(task_id: str, n: int) -> bytes:
    return codec.dumps(
        {"task_id": task_id, "description": DESCRIPTION, "input": {"n": n, "data": INPUT_DATA}}
    )


def make_tasks(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` (id, payload) pairs, encoded before any clock starts."""
    return [(f"{prefix}-{n}", payload(f"{prefix}-{n}", n)) for n in range(count)]


StatusOf = Callable[[aioredis.Redis, list[str]], Awaitable[list[str | None]]]
# (started_at, finished_at) as wall-clock seconds, from the system's own records
TimelineOf = Callable[[aioredis.Redis, list[str]], Awaitable[list[tuple[float, float] | None]]]


@dataclass(frozen=True)
class Target:
    """Where tasks go and how their completion is seen, for one system under test."""

    name: str
    subject: str
    done_subject: str
    parse_done: Callable[[bytes], str]
    status_of: StatusOf
    running_subject: str | None = None
    timeline_of: TimelineOf | None = None


def _event_task_id(data: bytes) -> str:
    return str(codec.loads(data)["task_id"])


def foundry_target(names: Names, agent_type: str) -> Target:
    async def status_of(redis: aioredis.Redis, ids: list[str]) -> list[str | None]:
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(names.task_key(task_id), "status")
            raw = await pipe.execute()
        return [r.decode() if r else None for r in raw]

    async def timeline_of(
        redis: aioredis.Redis, ids: list[str]
    ) -> list[tuple[float, float] | None]:
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(names.task_key(task_id), "started_at", "finished_at")
            raw = await pipe.execute()
        return [(float(a), float(b)) if a and b else None for a, b in raw]

    return Target(
        "foundry",
        names.tasks(agent_type),
        names.task_event(COMPLETED, agent_type),
        _event_task_id,
        status_of,
        names.task_event(RUNNING, agent_type),
        timeline_of,
    )


def baseline_target(subject: str, done_subject: str, key_prefix: str) -> Target:
    async def status_of(redis: aioredis.Redis, ids: list[str]) -> list[str | None]:
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.exists(key_prefix + task_id)
            raw = await pipe.execute()
        return [COMPLETED if r else None for r in raw]

    return Target("baseline", subject, done_subject, bytes.decode, status_of)


@dataclass
class Completions:
    """First completion time of every task (perf_counter), duplicates counted."""

    parse: Callable[[bytes], str]
    first: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    pending: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sub: Subscription | None = None
    _count_waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    async def start(self, nc: NATS, subject: str) -> Completions:
        self.sub = await nc.subscribe(subject, cb=self._on_msg, pending_msgs_limit=1_000_000)
        return self

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    def expect(self, ids: list[str]) -> None:
        """Wait for these ids (those already seen count as done)."""
        self.pending = set(ids).difference(self.first)
        self.done = asyncio.Event()
        if not self.pending:
            self.done.set()

    async def _on_msg(self, msg: Msg) -> None:
        now = time.perf_counter()
        try:
            task_id = self.parse(msg.data)
        except (ValueError, KeyError, TypeError):
            return
        if task_id in self.first:
            self.duplicates += 1
            return
        self.first[task_id] = now
        for count, event in self._count_waiters:
            if len(self.first) >= count:
                event.set()
        if self.pending:
            self.pending.discard(task_id)
            if not self.pending:
                self.done.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_count(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct tasks completed (bounded)."""
        if len(self.first) >= count:
            return True
        entry = (count, asyncio.Event())
        self._count_waiters.append(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._count_waiters.remove(entry)


@dataclass
class Counter:
    """How many times each task id was seen on a subject (e.g. running events)."""

    parse: Callable[[bytes], str]
    seen: dict[str, int] = field(default_factory=dict)
    sub: Subscription | None = None

    async def start(self, nc: NATS, subject: str) -> Counter:
        self.sub = await nc.subscribe(subject, cb=self._on_msg, pending_msgs_limit=1_000_000)
        return self

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            task_id = self.parse(msg.data)
        except (ValueError, KeyError, TypeError):
            return
        self.seen[task_id] = self.seen.get(task_id, 0) + 1


async def publish(js: JetStreamContext, subject: str, task_id: str, data: bytes) -> Any:
    """Start one JetStream publish; returns the future of its stream ack."""
    return await js.publish_async(subject, data, headers={MSG_ID_HEADER: task_id}, wait_stall=10.0)


async def publish_all(
    js: JetStreamContext,
    subject: str,
    tasks: list[tuple[str, bytes]],
    timeout: float = 60.0,
    rounds: int = 5,
) -> int:
    """Publish every task (acks awaited at the end, bounded); returns how many failed.

    Publishes that failed or got no ack (a clustered stream electing a leader) are
    published again with the same ``Nats-Msg-Id``, at most ``rounds`` times in all: the
    stream stores each task once.
    """
    todo = tasks
    for round_no in range(rounds):
        futures = [await publish(js, subject, task_id, data) for task_id, data in todo]
        failed = await unsettled(futures, timeout)
        todo = [todo[i] for i in failed]
        if not todo:
            return 0
        await asyncio.sleep(min(0.5 * (round_no + 1), 2.0))
    return len(todo)


async def unsettled(futures: list[Any], timeout: float) -> list[int]:
    """Wait (bounded) for publish acks; the indexes of those that failed or never resolved."""
    if not futures:
        return []
    _, pending = await asyncio.wait(futures, timeout=timeout)
    for fut in pending:
        fut.cancel()
    return [
        i
        for i, f in enumerate(futures)
        if f in pending or f.cancelled() or f.exception() is not None
    ]


async def settle(futures: list[Any], timeout: float) -> int:
    """Wait (bounded) for publish acks; returns the number that failed or never resolved."""
    return len(await unsettled(futures, timeout))


async def missing(redis: aioredis.Redis, target: Target, ids: list[str]) -> list[str]:
    """Ids whose result is not readable as completed in Redis."""
    out: list[str] = []
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        statuses = await target.status_of(redis, chunk)
        out.extend(t for t, s in zip(chunk, statuses, strict=True) if s != COMPLETED)
    return out
