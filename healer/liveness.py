"""Liveness from heartbeats: who is alive, who fell silent, what each worker last held.

Liveness reports facts; the supervisor decides. A heartbeat that names one of
this healer's slots counts only when it carries the pid the healer launched for
that slot (from this host): any other is dropped and counted, never taken as a
sign of life nor as silence. Workers of other healers are kept in the shared
live-worker table and reported once each when they fall silent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foundry.contracts import Heartbeat, SlotState, WorkerState
from foundry.livetable import LiveTable, Seen
from foundry.names import Names
from foundry.rejections import REJECTIONS
from healer.slots import Slot

SlotLookup = Callable[[str], Slot | None]


class Liveness:
    """Heartbeats of every worker: ours checked against our pids, foreign ones kept apart."""

    def __init__(
        self,
        names: Names,
        host: str,
        silence_timeout: float,
        start_grace: float,
        our_slot: SlotLookup,
    ) -> None:
        self.names = names
        self.host = host
        self.silence_timeout = silence_timeout
        self.start_grace = start_grace
        self.our_slot = our_slot
        self.started = time.monotonic()
        self.table = LiveTable(silence_timeout, on_retire=self._forget)
        self._foreign_reported: set[tuple[str, int]] = set()
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> None:
        self.started = time.monotonic()
        self._sub = await nc.subscribe(self.names.heartbeat("*", "*"), cb=self._on_beat)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_beat(self, msg: Msg) -> None:
        beat = REJECTIONS.parse(lambda: Heartbeat.from_payload(msg.data, msg.subject))
        if beat is not None:
            self.take(beat)

    def take(self, beat: Heartbeat) -> None:
        slot = self.our_slot(beat.worker_id)
        if slot is not None and (beat.pid != slot.pid or beat.host != self.host):
            REJECTIONS.record(
                "heartbeat",
                "pid",
                f"{beat.worker_id} beat with pid {beat.pid} from {beat.host!r}; this healer "
                f"launched pid {slot.pid} on {self.host!r}",
            )
            return
        self.table.observe(beat)

    def _forget(self, seen: Seen) -> None:
        self._foreign_reported.discard((seen.beat.worker_id, seen.beat.pid))

    def last(self, slot: Slot) -> Heartbeat | None:
        """The last beat sent by the slot's current process, if any."""
        seen = self.table.get(slot.name)
        if seen is None or seen.beat.pid != slot.pid:
            return None
        return seen.beat

    def heard(self, slot: Slot) -> bool:
        """Whether the slot's current process has beaten since it was launched."""
        seen = self.table.get(slot.name)
        return seen is not None and seen.beat.pid == slot.pid and seen.received >= slot.launched_at

    def judging(self) -> bool:
        return time.monotonic() - self.started >= self.silence_timeout

    def silent_for(self, slot: Slot) -> float | None:
        """Seconds a starting or running worker slot has been silent past its allowance."""
        if slot.state not in (SlotState.STARTING, SlotState.RUNNING) or not self.judging():
            return None
        now = time.monotonic()
        seen = self.table.get(slot.name)
        if self.heard(slot) and seen is not None:
            silent = now - seen.received
            return silent if silent > self.silence_timeout else None
        waited = now - slot.launched_at
        return waited if waited > self.start_grace else None

    def silent_foreign(self) -> list[Heartbeat]:
        """Workers not launched by us that fell silent (each reported once per pid)."""
        out = []
        for seen in self.table.live():
            beat = seen.beat
            if self.our_slot(beat.worker_id) is not None or beat.state is WorkerState.STOPPED:
                continue
            key = (beat.worker_id, beat.pid)
            if self.table.silent(seen) and key not in self._foreign_reported:
                self._foreign_reported.add(key)
                out.append(beat)
        return out
