"""What the healer answers on ``agents.control.*``: status, heal now, release."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from foundry.contracts import ControlReply, ControlRequest, RelaunchReason, SlotKind, SlotState
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
    ) -> None:
        self.supervisor = supervisor
        self.liveness = liveness
        self.watch = watch
        self.remediator = remediator
        self.host_sample = host_sample

    async def status(self, _request: ControlRequest) -> ControlReply:
        return ControlReply(
            {
                "slots": [s.to_json() for s in self.supervisor.slots.values()],
                "pid": os.getpid(),
                "remediation": self.remediator.state(),
                "host": self.host_sample(),
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
            }
        )

    async def release(self, request: ControlRequest) -> ControlReply:
        name = request.worker_id or ""
        slot = self.supervisor.slots.get(name)
        if slot is None:
            return ControlReply.failure("not_found", f"no slot {name!r} on this healer")
        if slot.state is not SlotState.QUARANTINED:
            return ControlReply.failure(
                "conflict", f"{name} is {slot.state}, not quarantined: nothing to release"
            )
        await self.supervisor.release(slot)
        return ControlReply({"released": True, "worker_id": slot.name, "state": slot.state})
