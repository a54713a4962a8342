"""What the gateway knows live: workers from heartbeats, and waiters on task completion.

Long-polls (``?wait=``) wake on completion events, not by polling Redis. After a
NATS reconnect every waiter re-reads Redis once, since events may have been
missed while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foundry import codec
from foundry.messages import COMPLETED, DEAD, FAILED, Heartbeat
from foundry.names import Names


@dataclass
class Seen:
    beat: Heartbeat
    received: float  # monotonic


class ClusterView:
    """Heartbeat table and completion waiters, fed by core NATS subscriptions."""

    def __init__(self, names: Names, silence_timeout: float) -> None:
        self.names = names
        self.silence_timeout = silence_timeout
        self.workers: dict[str, Seen] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        self._subs.append(await nc.subscribe(self.names.heartbeat("*", "*"), cb=self._on_beat))
        for status in (COMPLETED, FAILED, DEAD):
            subject = self.names.task_event(status, "*")
            self._subs.append(await nc.subscribe(subject, cb=self._on_final))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.wake_all()

    # ---- heartbeats ------------------------------------------------------------------
    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = Heartbeat.from_payload(msg.data)
        except (ValueError, TypeError):
            return
        if beat.state == "stopped":
            self.workers.pop(beat.worker_id, None)
        else:
            self.workers[beat.worker_id] = Seen(beat, time.monotonic())

    def forget_stale(self, older_than: float) -> None:
        now = time.monotonic()
        for wid in [w for w, s in self.workers.items() if now - s.received > older_than]:
            del self.workers[wid]

    def live_workers(self) -> list[dict[str, Any]]:
        self.forget_stale(max(60.0, self.silence_timeout * 20))
        now_mono, now = time.monotonic(), time.time()
        rows = []
        for seen in sorted(self.workers.values(), key=lambda s: s.beat.worker_id):
            b, age = seen.beat, now_mono - seen.received
            rows.append(
                {
                    "worker_id": b.worker_id,
                    "agent_type": b.agent_type,
                    "status": "healthy" if age <= self.silence_timeout else "unhealthy",
                    "state": b.state,
                    "pid": b.pid,
                    "host": b.host,
                    "slot": b.slot,
                    "tasks_processed": b.processed,
                    "errors": b.failed,
                    "in_flight": len(b.in_flight),
                    "uptime_seconds": round(max(0.0, now - b.started_at), 3),
                    "last_heartbeat_age_seconds": round(age, 3),
                    "rss_bytes": b.rss_bytes,
                    "cpu_percent": b.cpu_percent,
                    "loop_lag_seconds": b.loop_lag_seconds,
                }
            )
        return rows

    # ---- completion waiters ------------------------------------------------------------
    async def _on_final(self, msg: Msg) -> None:
        if not self._waiters:
            return
        try:
            task_id = codec.loads(msg.data).get("task_id")
        except (ValueError, AttributeError):
            return
        for fut in self._waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_result(None)

    @contextlib.contextmanager
    def waiter(self, task_id: str) -> Any:
        """Register before reading Redis, so no completion slips between read and wait."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(fut)
        try:
            yield fut
        finally:
            group = self._waiters.get(task_id)
            if group is not None:
                group.discard(fut)
                if not group:
                    del self._waiters[task_id]

    def wake_all(self) -> None:
        for group in self._waiters.values():
            for fut in group:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
