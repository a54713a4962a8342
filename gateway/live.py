"""What the gateway knows live: workers from heartbeats, and waiters on task completion.

Long-polls (``?wait=``) wake on completion events, not by polling Redis. The
gateway listens to completion events only while someone waits (and for a short
linger after), so a cluster fed over NATS does not pay for parsing events no
one reads. After a NATS reconnect every waiter re-reads Redis once, since
events may have been missed while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foundry.contracts import Heartbeat, TaskEvent, TaskStatus
from foundry.livetable import LiveTable
from foundry.names import Names
from foundry.rejections import REJECTIONS

LINGER_SECONDS = 10.0  # keep listening this long after the last waiter left
# the events of a final status (a cancel, before or during the run, is announced too)
FINAL_EVENTS = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED)
log = logging.getLogger(__name__)


class ClusterView:
    """Heartbeat table and completion waiters, fed by core NATS subscriptions."""

    def __init__(self, names: Names, silence_timeout: float) -> None:
        self.names = names
        self.silence_timeout = silence_timeout
        self.workers = LiveTable(silence_timeout)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subs: list[Subscription] = []
        self._final_subs: list[Subscription] = []
        self._listening = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._nc: NATS | None = None

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        self._subs.append(await nc.subscribe(self.names.heartbeat("*", "*"), cb=self._on_beat))

    async def stop(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        for sub in [*self._subs, *self._final_subs]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.wake_all()

    # ---- heartbeats ------------------------------------------------------------------
    async def _on_beat(self, msg: Msg) -> None:
        beat = REJECTIONS.parse(lambda: Heartbeat.from_payload(msg.data, msg.subject))
        if beat is not None:
            self.workers.observe(beat)

    def live_workers(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for seen in self.workers.live():
            b, age = seen.beat, self.workers.age(seen)
            rows.append(
                {
                    "worker_id": b.worker_id,
                    "agent_type": b.agent_type,
                    "status": "unhealthy" if self.workers.silent(seen) else "healthy",
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
        event = REJECTIONS.parse(lambda: TaskEvent.from_payload(msg.data), msg.subject)
        if event is None:
            return
        for fut in self._waiters.pop(event.task_id, ()):
            if not fut.done():
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def waiter(self, task_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """Register and listen before reading Redis, so no completion slips between the
        read and the wait (a worker stores the result before announcing it)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(fut)
        try:
            await self._listen()
            yield fut
        finally:
            group = self._waiters.get(task_id)
            if group is not None:
                group.discard(fut)
                if not group:
                    del self._waiters[task_id]
            if not self._waiters and self._final_subs and self._linger is None:
                loop = asyncio.get_running_loop()
                self._linger = loop.call_later(LINGER_SECONDS, self._stop_listening)

    async def _listen(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._final_subs or self._nc is None:
            return
        async with self._listening:
            if self._final_subs:
                return
            nc = self._nc
            try:
                for status in FINAL_EVENTS:
                    subject = self.names.task_event(status, "*")
                    self._final_subs.append(await nc.subscribe(subject, cb=self._on_final))
                await nc.flush(timeout=2)  # the server knows our interest before we read
            except Exception as exc:  # NATS down: the wait ends at its deadline, re-reading
                log.debug("not listening to completion events: %r", exc)

    def _stop_listening(self) -> None:
        self._linger = None
        if self._waiters:
            return
        subs, self._final_subs = self._final_subs, []
        task = asyncio.get_running_loop().create_task(self._unsubscribe(subs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _unsubscribe(subs: list[Subscription]) -> None:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def wake_all(self) -> None:
        for group in self._waiters.values():
            for fut in group:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
