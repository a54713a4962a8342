"""What remediation policies may change, carried out on the supervisor's slots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts import SlotKind, SlotState, StopReason, WorkerControl
from foundry.names import Names
from healer.slots import Slot
from healer.supervisor import Supervisor


class HealerActuator:
    """Implements :class:`healer.remediation.base.Actuator`."""

    def __init__(
        self,
        supervisor: Supervisor,
        names: Names,
        nats: Callable[[], NATS | None],
        drain_grace: float,
    ) -> None:
        self.supervisor = supervisor
        self.names = names
        self.nats = nats
        self.drain_grace = drain_grace

    async def recycle(self, worker_id: str, reason: str) -> dict[str, Any]:
        slot = self.supervisor.slots.get(worker_id)
        if slot is None or slot.state is not SlotState.RUNNING:
            return {"recycled": False, "why": "not running"}
        old_pid = slot.pid
        await self.supervisor.terminate(slot, StopReason.RECYCLE, self.drain_grace)
        new_pid = await relaunched(slot, old_pid)
        return {"recycled": True, "old_pid": old_pid, "new_pid": new_pid, "reason": reason}

    async def set_concurrency(self, agent_type: str, concurrency: int | None) -> None:
        nc = self.nats()
        if nc is None:
            raise RuntimeError("not connected to NATS")
        payload = WorkerControl(concurrency).to_payload()
        await nc.publish(self.names.worker_control(agent_type), payload)

    def runs_server(self, name: str) -> bool:
        slot = self.supervisor.slots.get(name)
        return slot is not None and slot.kind is SlotKind.SERVER

    async def restart_server(self, name: str) -> dict[str, Any]:
        slot = self.supervisor.slots[name]
        old_pid = slot.pid
        await self.supervisor.terminate(slot, StopReason.UNREACHABLE, 5.0)
        new_pid = await relaunched(slot, old_pid)
        return {"restarted": new_pid is not None, "old_pid": old_pid, "new_pid": new_pid}


async def relaunched(slot: Slot, old_pid: int | None, within: float = 5.0) -> int | None:
    """The slot's new pid once the supervisor relaunched it (None if it did not, in time)."""
    for _ in range(int(within / 0.05)):
        if slot.pid != old_pid:
            return slot.pid
        await asyncio.sleep(0.05)
    return None
