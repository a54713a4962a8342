"""Redelivery on behalf of dead workers, poison tasks, and the dead-letter stream.

When a worker dies holding tasks, each is nak'ed through its own ack subject,
so it is redelivered at once instead of after ``ack_wait``. The nak is a request
the consumer answers; while no consumer listens (its leader was on a node that was
lost and an election is under way) it is sent again, in the background, for up to
``ack_wait`` (after which the server redelivers by itself), unless the task store
shows the task redelivered or finished meanwhile. A task that was in
flight at ``FOUNDRY_POISON_KILLS`` deaths is moved to ``AGENT_DEAD`` with the
evidence; so is a task that exhausted ``max_deliver``, once the server confirms
it (the advisory alone is only a claim: :mod:`healer.advisories`).

Nothing here trusts the bus: an ack subject is used only when it belongs to the
type's own consumer and names the delivery it was listed with, and an advisory
is acted on only when the message exists and its recorded attempts reached
``max_deliver``. Everything else is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from foundry.contracts import (
    DeadLetter,
    DeadLetterAction,
    HealAction,
    InFlightEntry,
    TaskEvent,
    TaskStatus,
)
from foundry.errors import CacheUnavailable
from foundry.names import Names
from foundry.rejections import REJECTIONS
from foundry.runtime import spawn
from foundry.store import TaskStore
from healer.advisories import Advisories, task_id_of

log = logging.getLogger(__name__)
Emit = Callable[..., Awaitable[None]]
KILLS_TTL = 3600.0  # forget kill evidence older than this
NAK_TIMEOUT = 1.0  # a consumer answers a nak within milliseconds
NAK_RETRY = 0.25
# No consumer leader listens (it was lost, an election is under way), or the connection
# is down: the nak reached no consumer.
NAK_UNSENT = (
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
)


def ack_target(reply: str) -> tuple[str, str, int] | None:
    """(stream, consumer, stream sequence) of a JetStream ack subject, else None."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return None
    if len(tokens) == 9:
        stream, consumer, seq = tokens[2], tokens[3], tokens[5]
    elif len(tokens) >= 11:  # with domain and account hash
        stream, consumer, seq = tokens[4], tokens[5], tokens[7]
    else:
        return None
    return (stream, consumer, int(seq)) if seq.isascii() and seq.isdigit() else None


class DeadLetters:
    def __init__(
        self,
        nc: NATS,
        store: TaskStore,
        names: Names,
        poison_kills: int,
        max_deliver: int,
        emit: Emit,
        leading: Callable[[], bool] = lambda: True,
        keep_seconds: float = 60.0,
        nak_within: float = 30.0,
    ) -> None:
        self.nc = nc
        self.nak_within = nak_within
        self.js = nc.jetstream()
        self.store = store
        self.names = names
        self.poison_kills = poison_kills
        self.max_deliver = max_deliver
        self.emit = emit
        self.kills: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._naks: set[asyncio.Task[Any]] = set()
        # Advisories reach every healer; only the leader (cluster-wide duty) acts on them.
        self.advisories = Advisories(
            nc, store, names, max_deliver, self.dead_letter, leading, keep_seconds
        )

    async def start(self) -> None:
        await self.advisories.start()

    def _owned(self, agent_type: str, entry: InFlightEntry) -> bool:
        """Whether ``entry.reply`` acks ``entry.stream_seq`` on one of the type's own
        consumers (one per lane)."""
        target = ack_target(entry.reply)
        consumers = self.names.consumers(agent_type)
        if (
            target is not None
            and target[0] == self.names.tasks_stream
            and target[1] in consumers
            and target[2] == entry.stream_seq
        ):
            return True
        REJECTIONS.record(
            "heartbeat",
            "foreign_ack",
            f"in-flight entry for seq {entry.stream_seq} of {agent_type!r} lists ack subject "
            f"{entry.reply[:80]!r}, not one of {', '.join(consumers)}",
        )
        return False

    async def _nak(self, entry: InFlightEntry) -> None:
        spawn(self._nak_until_answered(entry), self._naks)

    async def _nak_until_answered(self, entry: InFlightEntry) -> bool:
        """Nak until the consumer answers (True), for at most ``nak_within`` seconds.

        The server applies a nak to whatever delivery of the message is pending, so a
        second nak could interrupt a redelivery running elsewhere: a nak is sent again
        only when the last reached nobody, and not once the task store shows a later
        delivery claimed or the task final (another healer's nak, or ack_wait, came first).
        """
        deadline = time.monotonic() + self.nak_within
        while True:
            try:
                await self.nc.request(entry.reply, b"-NAK", timeout=NAK_TIMEOUT)
                return True
            except NAK_UNSENT as exc:
                if time.monotonic() + NAK_RETRY > deadline:
                    log.warning("nak of %s unanswered for %.0fs: %r", entry.task_id,
                                self.nak_within, exc)  # fmt: skip
                    return False
            except Exception as exc:
                log.warning("nak of %s not confirmed (%r)", entry.task_id, exc)
                return False
            await asyncio.sleep(NAK_RETRY)
            if await self._superseded(entry):
                return False

    async def _superseded(self, entry: InFlightEntry) -> bool:
        try:
            record = await self.store.get(entry.task_id)
        except CacheUnavailable:
            return False
        return record is not None and (record.final or record.attempts > entry.delivery)

    async def worker_died(
        self, agent_type: str, in_flight: list[InFlightEntry], evidence: dict[str, Any]
    ) -> list[str]:
        """Nak what the dead worker held, or dead-letter it; returns poisoned task ids."""
        self._prune()
        poisoned = []
        for entry in in_flight:
            if not self._owned(agent_type, entry):
                continue
            if not entry.running:  # held, not running: it cannot have killed the worker
                await self._nak(entry)
                continue
            key = (agent_type, entry.stream_seq)
            kills = self.kills.setdefault(key, [])
            kills.append({**evidence, "task_id": entry.task_id, "mono": time.monotonic()})
            if len(kills) < self.poison_kills:
                await self._nak(entry)
                continue
            task_id = await self.dead_letter(
                agent_type,
                entry.stream_seq,
                DeadLetterAction.POISON,
                f"in flight at {len(kills)} worker deaths (FOUNDRY_POISON_KILLS="
                f"{self.poison_kills})",
                kills,
                reply=entry.reply,
            )
            poisoned.append(task_id or entry.task_id)
        return poisoned

    def _prune(self) -> None:
        cutoff = time.monotonic() - KILLS_TTL
        for key in [k for k, v in self.kills.items() if v[-1]["mono"] < cutoff]:
            del self.kills[key]

    async def dead_letter(
        self,
        agent_type: str,
        seq: int,
        action: DeadLetterAction,
        reason: str,
        evidence: list[dict[str, Any]],
        reply: str | None = None,
    ) -> str | None:
        """Copy the task to AGENT_DEAD, mark it dead, then remove it from AGENT_TASKS; the
        task id, or None when there was nothing to do.

        Safe to repeat: the copy carries ``Nats-Msg-Id: dead-<id>``, so a second one is
        dropped by the server, and when that happens to a task already stored ``dead``
        (another healer got that far) only the removal is finished, without new events."""
        try:
            raw = await self.js.get_msg(self.names.tasks_stream, seq)
        except NotFoundError:
            self.kills.pop((agent_type, seq), None)
            return None  # already gone (acked or moved by another healer)
        payload = raw.data or b""
        task_id = task_id_of(raw.headers, payload, seq)
        clean = [{k: v for k, v in e.items() if k != "mono"} for e in evidence]
        record = DeadLetter(
            task_id, agent_type, seq, action, reason, payload.decode("utf-8", "replace"), clean
        )
        ack = await self.js.publish(
            self.names.dead(agent_type),
            record.to_payload(),
            headers={"Nats-Msg-Id": f"dead-{task_id}"},
        )
        if ack.duplicate and await self._stored_dead(task_id):
            log.info("task %s was dead-lettered already; removing it from the stream", task_id)
            with contextlib.suppress(Exception):
                await self.js.delete_msg(self.names.tasks_stream, seq)
            self.kills.pop((agent_type, seq), None)
            return None
        try:
            await self.store.mark_dead(task_id, agent_type, {"reason": reason, "evidence": clean})
        except CacheUnavailable as exc:
            log.warning("task %s dead-lettered but its status was not stored: %s", task_id, exc)
        if reply:
            with contextlib.suppress(Exception):
                await self.nc.publish(reply, b"+TERM")
        with contextlib.suppress(Exception):
            await self.js.delete_msg(self.names.tasks_stream, seq)
        self.kills.pop((agent_type, seq), None)
        event = TaskEvent(TaskStatus.DEAD, task_id, agent_type, error=reason)
        await self.nc.publish(
            self.names.task_event(TaskStatus.DEAD, agent_type), event.to_payload()
        )
        await self.emit(
            HealAction.POISON if action is DeadLetterAction.POISON else HealAction.DEAD_LETTER,
            agent_type=agent_type,
            task_id=task_id,
            stream_seq=seq,
            reason=reason,
            evidence=clean,
        )
        return task_id

    async def _stored_dead(self, task_id: str) -> bool:
        try:
            record = await self.store.get(task_id)
        except CacheUnavailable:
            return False
        return record is not None and record.status == TaskStatus.DEAD
