"""What the healer answers on ``agents.control.*``: status, heal now, release, cancel."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts import (
    ControlReply,
    ControlRequest,
    RelaunchReason,
    SlotKind,
    SlotState,
    TaskEvent,
    TaskStatus,
)
from foundry.errors import CacheUnavailable
from foundry.hostid import host_of
from foundry.names import Names
from foundry.store import TaskStore
from healer.liveness import Liveness
from healer.remediation import Remediator
from healer.supervisor import Supervisor
from healer.watch import Watch


class Operations:
    def __init__(
        self,
        supervisor: Supervisor,
        liveness: Liveness,
        watch: Watch,
        remediator: Remediator,
        host_sample: Callable[[], dict[str, Any] | None],
        host_id: str = "",
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.supervisor = supervisor
        self.liveness = liveness
        self.watch = watch
        self.remediator = remediator
        self.host_sample = host_sample
        self.host_id = host_id
        self.leading = leading
        self.store: TaskStore | None = None  # set once connected
        self.nc: NATS | None = None
        self.names: Names | None = None

    def connected(self, nc: NATS, store: TaskStore, names: Names) -> None:
        self.nc, self.store, self.names = nc, store, names

    async def status(self, _request: ControlRequest) -> ControlReply:
        return ControlReply(
            {
                "slots": [s.to_json() for s in self.supervisor.slots.values()],
                "pid": os.getpid(),
                "remediation": self.remediator.state(),
                "host": self.host_sample(),
                "host_id": self.host_id,
                "leader": self.leading(),
            }
        )

    async def heal(self, _request: ControlRequest) -> ControlReply:
        sup = self.supervisor
        healed = [s.name for s in await sup.relaunch_waiting()]
        for slot in sup.by_kind(SlotKind.WORKER):
            silent = self.liveness.silent_for(slot)
            if silent is not None:
                await self.watch.kill_silent(slot, silent)
                healed.append(slot.name)
        for slot in sup.slots.values():
            if slot.state is SlotState.STOPPED and slot.name not in healed:
                await sup.launch(slot, RelaunchReason.MANUAL)
                healed.append(slot.name)
        quarantined = [s.name for s in sup.slots.values() if s.state is SlotState.QUARANTINED]
        message = f"healed {len(healed)} worker(s)" if healed else "nothing to heal"
        if quarantined:
            message += f"; quarantined (release them explicitly): {', '.join(quarantined)}"
        return ControlReply(
            {
                "healed_workers": healed,
                "count": len(healed),
                "message": message,
                "quarantined": quarantined,
                "host_id": self.host_id,
            }
        )

    async def release(self, request: ControlRequest) -> ControlReply | None:
        name = request.worker_id or ""
        slot = self.supervisor.slots.get(name)
        owner = host_of(name)
        if slot is None and owner is not None and owner != self.host_id:
            return None  # another host's worker: its healer answers
        if slot is None:
            return ControlReply.failure("not_found", f"no slot {name!r} on this healer")
        if slot.state is not SlotState.QUARANTINED:
            return ControlReply.failure(
                "conflict",
                f"{name} is {slot.state}, not quarantined: nothing to release",
                worker_id=name,
                state=slot.state,
            )
        await self.supervisor.release(slot)
        return ControlReply({"released": True, "worker_id": slot.name, "state": slot.state})

    async def cancel(self, request: ControlRequest) -> ControlReply:
        """Cancel a task: at once if it has not started, else mark it and tell the workers
        (the one running it stops it and stores ``cancelled``)."""
        task_id = request.task_id or ""
        if self.store is None:
            return ControlReply.failure("internal", "the healer is not connected to Redis yet")
        try:
            outcome = await self.store.cancel(task_id)
        except CacheUnavailable as exc:
            return ControlReply.failure("internal", f"Redis unavailable: {exc}")
        if outcome == "missing":
            return ControlReply.failure("not_found", f"no task {task_id!r} (or it expired)")
        if outcome.startswith("final:"):
            status = outcome.partition(":")[2]
            return ControlReply.failure(
                "conflict",
                f"task {task_id!r} is already {status}: nothing to cancel",
                task_id=task_id,
                status=status,
            )
        if outcome == "cancelled":  # had not started: announce it, long-polls wake
            record = await self.store.get(task_id)
            agent_type = (record.agent_type if record else None) or "unknown"
            if self.nc is not None and self.names is not None:
                event = TaskEvent(TaskStatus.CANCELLED, task_id, agent_type)
                subject = self.names.task_event(TaskStatus.CANCELLED, agent_type)
                await self.nc.publish(subject, event.to_payload())
        if outcome == "cancelling" and self.nc is not None and self.names is not None:
            await self.nc.publish(self.names.cancel_notice(), request.to_payload())
        return ControlReply({"task_id": task_id, "status": outcome})
