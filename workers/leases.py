"""The in-flight table of one worker: what it holds, which handlers run, whose lease to extend.

One owner for all of it: entries by stream sequence (listed in heartbeats),
the running handler task of each (awaited when draining or isolating, cancelled
when its task is cancelled by request), and the messages whose lease is kept
alive by one loop for the whole worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from foundry.contracts import InFlightEntry, task_id_from

log = logging.getLogger(__name__)


class InFlight:
    """Deliveries held by the worker, their handler tasks and their leases."""

    def __init__(self, ack_wait: float, safe: Callable[[Awaitable[Any]], Awaitable[None]]) -> None:
        self.entries: dict[int, InFlightEntry] = {}
        self.handlers: dict[int, asyncio.Task[Any]] = {}  # stream seq → its handler task
        self.cancelled: set[int] = set()  # stream seqs whose task was cancelled by request
        self._leases: dict[int, Msg] = {}
        self._period = max(0.2, ack_wait / 3)
        self._safe = safe

    def __len__(self) -> int:
        return len(self.entries)

    def register(self, msg: Msg) -> InFlightEntry:
        meta = msg.metadata
        seq = meta.sequence.stream
        task_id = task_id_from(msg.headers, None, seq)  # the id as far as known before parsing
        entry = InFlightEntry(task_id, seq, msg.reply, meta.num_delivered, time.time())
        self.entries[seq] = entry
        return entry

    def release(self, entry: InFlightEntry) -> None:
        self.entries.pop(entry.stream_seq, None)
        self._leases.pop(entry.stream_seq, None)
        self.cancelled.discard(entry.stream_seq)

    def cancel(self, task_id: str) -> bool:
        """Stop the running handler of ``task_id`` (if this worker runs it)."""
        for seq, entry in self.entries.items():
            task = self.handlers.get(seq)
            if entry.task_id == task_id and entry.running and task is not None:
                self.cancelled.add(seq)
                task.cancel()
                return True
        return False

    def cancel_requested(self, entry: InFlightEntry) -> bool:
        return entry.stream_seq in self.cancelled

    def hold(self, msg: Msg, entry: InFlightEntry) -> None:
        """Keep the lease of a message whose handler does not run (yet)."""
        entry.running = False
        self._leases[entry.stream_seq] = msg

    def lease(self, msg: Msg, entry: InFlightEntry) -> None:
        self._leases[entry.stream_seq] = msg

    def unlease(self, entry: InFlightEntry) -> None:
        self._leases.pop(entry.stream_seq, None)

    def start(self, coro: Coroutine[Any, Any, Any], entry: InFlightEntry) -> asyncio.Task[Any]:
        """Run a handler task for ``entry``; tracked until it ends."""
        entry.running = True
        self._leases.pop(entry.stream_seq, None)  # the handler keeps its own lease from here
        seq = entry.stream_seq
        task = asyncio.create_task(coro)
        self.handlers[seq] = task
        task.add_done_callback(lambda done: self._ended(seq, done))
        return task

    def _ended(self, seq: int, task: asyncio.Task[Any]) -> None:
        if self.handlers.get(seq) is task:
            del self.handlers[seq]

    def snapshot(self) -> list[InFlightEntry]:
        return list(self.entries.values())

    async def wait_handlers(self, within: float | None = None) -> set[asyncio.Task[Any]]:
        """Wait for the running handlers; returns those still running after ``within`` s."""
        if not self.handlers:
            return set()
        _, pending = await asyncio.wait(set(self.handlers.values()), timeout=within)
        return pending

    async def keep_leases(self) -> None:
        """Extend the lease of every held message after a third of ``ack_wait``
        (one loop for the worker: a task per handler costs more than the work here)."""
        since: dict[int, float] = {}
        while True:
            await asyncio.sleep(self._period / 4)
            now = time.monotonic()
            for seq in [s for s in since if s not in self._leases]:
                del since[seq]
            for seq, msg in list(self._leases.items()):
                if now - since.setdefault(seq, now) >= self._period:
                    since[seq] = now
                    await self._safe(msg.in_progress())


async def safe(aw: Awaitable[Any]) -> None:
    """Await a NATS operation whose failure redelivery recovers (a lost ack or event)."""
    try:
        await aw
    except Exception as exc:
        log.debug("nats op failed: %r", exc)
