"""Redelivery on behalf of dead workers, poison tasks, and the dead-letter stream.

When a worker dies holding tasks, each is nak'ed through its own ack subject,
so it is redelivered at once instead of after ``ack_wait``. A task that was in
flight at ``FOUNDRY_POISON_KILLS`` deaths is moved to ``AGENT_DEAD`` with the
evidence; so is a task that exhausted ``max_deliver`` (the JetStream advisory).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from foundry import codec
from foundry.errors import CacheUnavailable
from foundry.messages import DEAD, MSG_ID_HEADER, task_id_from
from foundry.names import Names
from foundry.store import TaskStore

log = logging.getLogger(__name__)
Emit = Callable[..., Awaitable[None]]
KILLS_TTL = 3600.0  # forget kill evidence older than this


class DeadLetters:
    def __init__(self, nc: NATS, store: TaskStore, names: Names, poison_kills: int, emit: Emit):
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self.names = names
        self.poison_kills = poison_kills
        self.emit = emit
        self.kills: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.dead_lettered = 0

    async def start(self) -> None:
        await self.nc.subscribe(self.names.max_deliveries_advisory(), cb=self._on_max_deliveries)

    async def worker_died(
        self, agent_type: str, in_flight: list[dict[str, Any]], evidence: dict[str, Any]
    ) -> list[str]:
        """Nak what the dead worker held, or dead-letter it; returns poisoned task ids."""
        self._prune()
        poisoned = []
        for entry in in_flight:
            if not entry.get("running", True):  # held, not running: it cannot have killed it
                with contextlib.suppress(Exception):
                    await self.nc.publish(entry["reply"], b"-NAK")
                continue
            key = (agent_type, int(entry["stream_seq"]))
            kills = self.kills.setdefault(key, [])
            kills.append({**evidence, "task_id": entry.get("task_id"), "mono": time.monotonic()})
            if len(kills) >= self.poison_kills:
                task_id = await self.dead_letter(
                    agent_type,
                    key[1],
                    "poison",
                    f"in flight at {len(kills)} worker deaths (FOUNDRY_POISON_KILLS="
                    f"{self.poison_kills})",
                    kills,
                    reply=entry.get("reply"),
                )
                poisoned.append(task_id or str(entry.get("task_id")))
            else:
                with contextlib.suppress(Exception):
                    await self.nc.publish(entry["reply"], b"-NAK")
        return poisoned

    def _prune(self) -> None:
        cutoff = time.monotonic() - KILLS_TTL
        for key in [k for k, v in self.kills.items() if v[-1]["mono"] < cutoff]:
            del self.kills[key]

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            body = codec.loads(msg.data)
            consumer, seq = body["consumer"], int(body["stream_seq"])
        except (ValueError, KeyError, TypeError):
            return
        agent_type = Names.type_of_consumer(consumer)
        if agent_type is None:
            return
        deliveries = body.get("deliveries")
        await self.dead_letter(
            agent_type,
            seq,
            "max_deliver",
            f"delivered {deliveries} times without an ack (FOUNDRY_MAX_DELIVER)",
            [{"deliveries": deliveries}],
        )

    async def dead_letter(
        self,
        agent_type: str,
        seq: int,
        action: str,
        reason: str,
        evidence: list[dict[str, Any]],
        reply: str | None = None,
    ) -> str | None:
        """Copy the task to AGENT_DEAD, mark it dead, then remove it from AGENT_TASKS."""
        try:
            raw = await self.js.get_msg(self.names.tasks_stream, seq)
        except NotFoundError:
            self.kills.pop((agent_type, seq), None)
            return None  # already gone (acked or moved by another healer)
        payload = raw.data or b""
        body_id = None
        with contextlib.suppress(ValueError, AttributeError):
            body_id = codec.loads(payload).get("task_id")
        task_id = task_id_from(raw.headers, body_id, seq)
        clean = [{k: v for k, v in e.items() if k != "mono"} for e in evidence]
        record = {
            "task_id": task_id,
            "agent_type": agent_type,
            "stream_seq": seq,
            "reason": reason,
            "action": action,
            "evidence": clean,
            "payload": payload.decode("utf-8", "replace"),
        }
        await self.js.publish(
            self.names.dead(agent_type),
            codec.dumps(record),
            headers={MSG_ID_HEADER: f"dead-{task_id}"},
        )
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
        self.dead_lettered += 1
        event = codec.dumps(
            {
                "kind": "task.dead",
                "at": time.time(),
                "task_id": task_id,
                "agent_type": agent_type,
                "status": DEAD,
                "error": reason,
            }
        )
        await self.nc.publish(self.names.task_event(DEAD, agent_type), event)
        await self.emit(
            "poison" if action == "poison" else "dead_letter",
            agent_type=agent_type,
            task_id=task_id,
            stream_seq=seq,
            reason=reason,
            evidence=clean,
        )
        return task_id
