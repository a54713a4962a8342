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

import psutil
from nats.aio.client import Client as NATS

from foundry.contracts import Heartbeat

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
        self._rss = 0
        self._cpu = 0.0

    def fill(self, beat: Heartbeat, refresh: bool = True) -> Heartbeat:
        """Add process figures (rss, cpu, loop lag, sent_at) to a snapshot; ``refresh=False``
        (the extra beats that announce new tasks) reuses the last rss and cpu readings."""
        if refresh:
            try:
                self._rss = int(self._proc.memory_info().rss)
                self._cpu = float(self._proc.cpu_percent(None))
            except psutil.Error:  # pragma: no cover - our own process
                pass
        beat.rss_bytes = self._rss
        beat.cpu_percent = self._cpu
        beat.loop_lag_seconds = round(self.lag, 6)
        beat.sent_at = time.time()
        return beat

    async def send_once(self, refresh: bool = True) -> None:
        beat = self.fill(self.snapshot(), refresh)
        try:
            await self.nc.publish(self.subject, beat.to_payload())
        except Exception as exc:  # disconnected: the next beat tries again
            log.debug("heartbeat not sent: %s", exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.send_once()
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, loop.time() - expected)
