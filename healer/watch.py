"""Judging workers: silent ones are killed and replaced, the dead ones' tasks redelivered.

The watch turns facts from :class:`Liveness` into requests to the
:class:`Supervisor` (first beat heard, stop a silent process) and into
redeliveries through :class:`DeadLetters`. It never assigns slot state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psutil

from foundry.contracts import HealAction, RelaunchReason, SlotKind, StopReason
from foundry.runtime import spawn
from healer.deadletter import DeadLetters
from healer.events import Emitter
from healer.liveness import Liveness
from healer.slots import Death, Slot
from healer.supervisor import Supervisor

log = logging.getLogger(__name__)
KILL_GRACE = 0.5  # a silent worker gets this long after SIGTERM before SIGKILL


class Watch:
    def __init__(
        self,
        supervisor: Supervisor,
        liveness: Liveness,
        emit: Emitter,
        silence_timeout: float,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.supervisor = supervisor
        # Other hosts' silent workers are a cluster-wide duty: the leader's alone.
        self.leading = leading
        self.liveness = liveness
        self.emit = emit
        self.period = min(0.25, silence_timeout / 4)
        self.deadletters: DeadLetters | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        supervisor.on_death = self.on_death

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception:
                log.exception("silence check failed")

    async def check(self) -> list[str]:
        """One round: confirm first beats, kill the silent; returns the slots killed."""
        killed = []
        for slot in self.supervisor.by_kind(SlotKind.WORKER):
            if self.liveness.heard(slot):
                self.supervisor.heard(slot)
            silent = self.liveness.silent_for(slot)
            if silent is not None:
                await self.kill_silent(slot, silent)
                killed.append(slot.name)
        for beat in self.liveness.silent_foreign() if self.leading() else ():
            if beat.in_flight and self.deadletters is not None:
                evidence = {
                    "worker_id": beat.worker_id,
                    "pid": beat.pid,
                    "reason": "silent",
                    "rss_bytes": beat.rss_bytes,
                }
                await self.deadletters.worker_died(beat.agent_type, beat.in_flight, evidence)
            await self.emit(
                HealAction.SILENT_FOREIGN,
                agent_type=beat.agent_type,
                worker_id=beat.worker_id,
                reason="silent",
                pid=beat.pid,
                tasks_redelivered=len(beat.in_flight),
            )
        return killed

    async def kill_silent(self, slot: Slot, silent: float) -> None:
        slot.silent_seconds = silent
        await self.emit(
            HealAction.KILL_SILENT,
            slot=slot,
            reason="silent",
            pid=slot.pid,
            silent_seconds=round(silent, 3),
        )
        grace = KILL_GRACE
        with contextlib.suppress(psutil.Error, TypeError):
            if psutil.Process(slot.pid).status() == psutil.STATUS_STOPPED:
                grace = 0.0  # a stopped process cannot act on SIGTERM: kill it now
        spawn(self.supervisor.terminate(slot, StopReason.SILENT, grace), self._tasks)

    async def on_death(self, slot: Slot, death: Death, reason: RelaunchReason) -> None:
        """Redeliver (or dead-letter) what a dead worker held; excuse deliberate deaths."""
        if reason is RelaunchReason.RECYCLE:
            death.excused = True  # stopped on purpose
        if not slot.is_worker or self.deadletters is None:
            return
        beat = self.liveness.last(slot)
        if beat is None or not beat.in_flight:
            return
        death.task_ids = beat.running_task_ids()
        evidence = {
            "worker_id": slot.name,
            "pid": slot.pid,
            "exit_code": death.exit_code,
            "signal": death.signal,
            "rss_bytes": beat.rss_bytes,
            "reason": reason,
            "at": time.time(),
        }
        poisoned = set(
            await self.deadletters.worker_died(slot.agent_type or "", beat.in_flight, evidence)
        )
        if poisoned:  # the slot is not quarantined for the task's sake
            kept = [d for d in slot.deaths if not (d.task_ids & poisoned)]
            slot.deaths.clear()
            slot.deaths.extend(kept)
            death.excused = True
