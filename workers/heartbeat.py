"""The worker's heartbeat: a core NATS event every interval, sent beside task work.

The beat runs on the worker's event loop, so a busy worker still beats while a
wedged loop (a handler that blocks the thread) does not: silence means hung.
It also measures the loop's lag, i.e. how late the beat woke up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

import psutil
from nats.aio.client import Client as NATS

from foundry import codec
from foundry.messages import Heartbeat

log = logging.getLogger(__name__)


class HeartbeatSender:
    """Publishes ``snapshot()`` on ``subject`` every ``interval`` seconds until cancelled."""

    def __init__(
        self, nc: NATS, subject: str, interval: float, snapshot: Callable[[], Heartbeat]
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.interval = interval
        self.snapshot = snapshot
        self.lag = 0.0
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    def fill(self, beat: Heartbeat) -> Heartbeat:
        """Add process figures (rss, cpu, loop lag, sent_at) to a snapshot."""
        try:
            beat.rss_bytes = int(self._proc.memory_info().rss)
            beat.cpu_percent = float(self._proc.cpu_percent(None))
        except psutil.Error:  # pragma: no cover - our own process
            pass
        beat.loop_lag_seconds = round(self.lag, 6)
        beat.sent_at = time.time()
        return beat

    async def send_once(self) -> None:
        beat = self.fill(self.snapshot())
        try:
            await self.nc.publish(self.subject, codec.dumps(asdict(beat)))
        except Exception as exc:  # disconnected: the next beat tries again
            log.debug("heartbeat not sent: %s", exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.send_once()
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, loop.time() - expected)
