"""Liveness from heartbeats: who is alive, who fell silent, what each worker last held.

A slot is judged only after the healer has watched for one silence window, and
a freshly launched process gets ``start_grace`` seconds for its first beat.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foundry.messages import Heartbeat
from foundry.names import Names
from healer.slots import RUNNING, STARTING, Slot


@dataclass
class Beat:
    beat: Heartbeat
    received: float  # monotonic


class Liveness:
    """Tracks heartbeats of every worker (ours and foreign)."""

    def __init__(self, names: Names, silence_timeout: float, start_grace: float) -> None:
        self.names = names
        self.silence_timeout = silence_timeout
        self.start_grace = start_grace
        self.started = time.monotonic()
        self.beats: dict[str, Beat] = {}
        self.foreign_handled: set[tuple[str, int]] = set()
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> None:
        self.started = time.monotonic()
        self._sub = await nc.subscribe(self.names.heartbeat("*", "*"), cb=self._on_beat)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = Heartbeat.from_payload(msg.data)
        except (ValueError, TypeError):
            return
        self.beats[beat.worker_id] = Beat(beat, time.monotonic())

    def last(self, slot: Slot) -> Heartbeat | None:
        """The last beat sent by the slot's current process, if any."""
        seen = self.beats.get(slot.name)
        if seen is None or seen.beat.pid != slot.pid:
            return None
        return seen.beat

    def judging(self) -> bool:
        return time.monotonic() - self.started >= self.silence_timeout

    def silent_for(self, slot: Slot) -> float | None:
        """Seconds a running worker slot has been silent past its allowance, else None."""
        if slot.state not in (STARTING, RUNNING) or not self.judging():
            return None
        now = time.monotonic()
        seen = self.beats.get(slot.name)
        if seen is not None and seen.beat.pid == slot.pid and seen.received >= slot.launched_at:
            slot.state = RUNNING
            silent = now - seen.received
            return silent if silent > self.silence_timeout else None
        waited = now - slot.launched_at
        return waited if waited > self.start_grace else None

    def silent_foreign(self, ours: set[str]) -> list[Heartbeat]:
        """Workers not launched by us that fell silent (each reported once per pid)."""
        now = time.monotonic()
        out = []
        for wid, seen in list(self.beats.items()):
            if wid in ours or seen.beat.state == "stopped":
                continue
            key = (wid, seen.beat.pid)
            if now - seen.received > self.silence_timeout and key not in self.foreign_handled:
                self.foreign_handled.add(key)
                out.append(seen.beat)
            if now - seen.received > max(60.0, self.silence_timeout * 20):
                del self.beats[wid]
        return out
