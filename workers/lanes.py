"""The three lanes of one agent type, read in priority order, and moves their headers ask for.

Each lane has its own durable consumer (:meth:`foundry.names.Names.consumers`).
The worker keeps one long-poll pull on the high lane at all times (see
:meth:`workers.worker.Worker._high_loop`), so a high task is seen the moment it
is stored. The main fetch takes, for the free places: the high lane first while
that lane is known to hold more than the long-poll took; then the normal lane
with the same long-poll fetch as a single-lane worker; the low lane only when
the normal lane returned nothing. While the worker serves the low lane, the
normal lane is probed without waiting before every low fetch.

A message on the normal lane may carry headers that ask for something else:
``Foundry-Priority: low`` moves it to the low lane; ``Foundry-Not-Before`` in the
future moves it to a schedule (:mod:`foundry.schedule`); a short wait (under
:data:`HOLD_LIMIT`) is waited out here instead. Moves publish first and ack
after, with ``Nats-Msg-Id`` ``<task id>@low`` / ``<task id>@at``, so a move
retried after a crash is stored once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from foundry.contracts import (
    MSG_ID_HEADER,
    TASK_ID_HEADER,
    Task,
    TaskPriority,
)
from foundry.names import Names
from foundry.schedule import check_room, schedule_message
from foundry.settings import Settings

log = logging.getLogger(__name__)
FETCH_TIMEOUT = 1.0  # shorter fetches stall now and then (DESIGN.md)
PROBE_TIMEOUT = 1.0  # an answer to a no-wait pull normally takes well under a millisecond
HOLD_LIMIT = 1.0  # a task due sooner than this waits in the worker, not in a schedule
FETCH_ERRORS = (TimeoutError, nats.errors.TimeoutError)


class Puller:
    """No-wait pulls on one consumer: what is there now, or nothing, in one round trip.

    (nats-py's ``fetch`` always lingers when the consumer is empty.)
    """

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.sub: Subscription | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox)

    async def pull(self, batch: int) -> list[Msg]:
        assert self.sub is not None
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await self.nc.publish(self.subject, request, reply=self.inbox)
        out: list[Msg] = []
        deadline = time.monotonic() + PROBE_TIMEOUT
        while len(out) < batch:
            try:
                msg = await self.sub.next_msg(timeout=max(0.001, deadline - time.monotonic()))
            except FETCH_ERRORS:
                break
            if JetStreamContext.is_status_msg(msg):
                break  # 404 no messages, 408 request done: nothing more on this pull
            out.append(msg)
        return out

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class Lanes:
    """The high, normal and low pull consumers of one agent type."""

    def __init__(self, nc: NATS, names: Names, agent_type: str) -> None:
        self.nc = nc
        self.names = names
        self.agent_type = agent_type
        self.high_waiting = False  # the high long-poll took a message: more may wait
        self.serving_low = False
        self.high: JetStreamContext.PullSubscription
        self.normal: JetStreamContext.PullSubscription
        stream = names.tasks_stream
        self._probe = {
            lane: Puller(nc, stream, names.consumer(agent_type, lane)) for lane in TaskPriority
        }

    async def bind(self) -> None:
        js, stream = self.nc.jetstream(), self.names.tasks_stream
        self.high = await js.pull_subscribe_bind(
            durable=self.names.consumer(self.agent_type, TaskPriority.HIGH), stream=stream
        )
        self.normal = await js.pull_subscribe_bind(
            durable=self.names.consumer(self.agent_type), stream=stream
        )
        for puller in self._probe.values():
            await puller.start()

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to ``batch`` messages, higher lanes first (see the module docstring)."""
        if self.high_waiting:
            msgs = await self._probe[TaskPriority.HIGH].pull(batch)
            self.high_waiting = len(msgs) == batch
            if msgs:
                return msgs
        if self.serving_low:
            msgs = await self._probe[TaskPriority.NORMAL].pull(batch)
        else:
            try:
                msgs = await self.normal.fetch(batch, timeout=FETCH_TIMEOUT)
            except FETCH_ERRORS:
                msgs = []
        if msgs:
            self.serving_low = False
            return msgs
        msgs = await self._probe[TaskPriority.LOW].pull(batch)
        self.serving_low = bool(msgs)
        return msgs

    async def fetch_high(self) -> list[Msg]:
        """The long-poll of the high lane: one message, or [] after FETCH_TIMEOUT."""
        try:
            msgs = await self.high.fetch(1, timeout=FETCH_TIMEOUT)
        except FETCH_ERRORS:
            return []
        self.high_waiting = bool(msgs)
        return msgs

    async def close(self) -> None:
        for closing in (self.high.unsubscribe(), self.normal.unsubscribe()):
            try:
                await closing
            except Exception as exc:
                log.debug("unsubscribe failed: %r", exc)
        for puller in self._probe.values():
            try:
                await puller.stop()
            except Exception as exc:
                log.debug("unsubscribe failed: %r", exc)


@dataclasses.dataclass(frozen=True)
class Move:
    """What a delivered task's headers ask of the worker before it runs."""

    lane: TaskPriority  # the lane it was delivered on
    to_low: bool  # normal lane, Foundry-Priority: low
    schedule: Task | None  # not due for a while: to be scheduled, in its lane
    hold: float  # seconds to wait here before running (short waits)


def plan_move(names: Names, subject: str, task: Task, now: float) -> Move:
    lane = TaskPriority(names.priority_of_subject(subject))
    effective = task.priority if lane is TaskPriority.NORMAL else lane
    wait = 0.0 if task.not_before is None else task.not_before - now
    if wait > HOLD_LIMIT:
        return Move(lane, False, dataclasses.replace(task, priority=effective), 0.0)
    return Move(lane, effective is TaskPriority.LOW and lane is not effective, None, max(0.0, wait))


async def move_to_low(nc: NATS, names: Names, msg: Msg, task: Task) -> bool:
    """Publish ``task`` as it came to the low lane; False when that lane refused it."""
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    headers.update({MSG_ID_HEADER: f"{task.task_id}@low", TASK_ID_HEADER: task.task_id})
    try:
        await nc.jetstream().publish(
            names.tasks(task.agent_type, TaskPriority.LOW), msg.data, headers=headers, timeout=2
        )
        return True
    except Exception as exc:
        log.warning(
            "task %s stays in the normal lane: the low lane refused it (%r)", task.task_id, exc
        )
        return False


async def move_to_schedule(nc: NATS, settings: Settings, msg: Msg, task: Task) -> None:
    """Publish ``task`` as a schedule for its ``not_before`` (raises when not stored)."""
    js = nc.jetstream()
    await check_room(js, settings)
    subject, headers = schedule_message(settings, task, msg.headers)
    await js.publish(subject, msg.data, headers=headers, timeout=2)
