"""One worker process: pull tasks of one agent type, run them, heartbeat, drain on stop.

The fetch loop takes as many messages as there are free places, registers
them in the in-flight table, announces them in a heartbeat written to the socket, then runs
each (see :mod:`workers.taskrun`). Redelivered tasks run one at a time with
nothing beside them (see :meth:`Worker._isolate_suspects`).

Lanes (:mod:`workers.lanes`): the fetch loop reads high, then normal, then low;
beside it the high loop keeps a long-poll on the high lane, so a high task is
taken at once and starts in the next free place. Messages fetched while every
place is taken wait, held and leased, in the ready queue (high ones in front);
no more than ``concurrency`` handlers ever run.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry.contracts import (
    ControlRequest,
    ControlVerb,
    Heartbeat,
    InFlightEntry,
    WorkerControl,
    WorkerState,
)
from foundry.ratelimit import LIMIT_STATS
from foundry.rejections import REJECTIONS
from foundry.runtime import spawn
from foundry.settings import Settings
from foundry.store import TaskStore
from workers.handlers import Handler, close_handler, setup_handler
from workers.heartbeat import HeartbeatSender
from workers.lanes import FETCH_TIMEOUT, Lanes
from workers.leases import InFlight, safe
from workers.taskrun import TaskRunner

log = logging.getLogger(__name__)
Held = tuple[Msg, InFlightEntry]


def default_worker_id(agent_type: str, host: str, pid: int) -> str:
    """``<type>-pid<pid>@<host>`` for a worker started without a healer slot (the host is
    already a subject token: foundry.hostid)."""
    return f"{agent_type}-pid{pid}@{host}"


class Worker:
    """Owns the connections, the fetch loop and the heartbeat of one worker process."""

    def __init__(
        self,
        settings: Settings,
        agent_type: str,
        handler: Handler,
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        slot: int | None = None,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.agent_type = agent_type
        self.handler = handler
        self.concurrency = self.default_concurrency = concurrency or settings.concurrency
        self.host = settings.host_id
        self.worker_id = worker_id or default_worker_id(agent_type, self.host, os.getpid())
        self.slot = slot
        self.state = WorkerState.STARTING
        self.started_at = time.time()
        self.inflight = InFlight(settings.ack_wait, safe)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slot_free = asyncio.Event()
        self._ready: collections.deque[Held] = collections.deque()  # fetched, not started
        self._ready_empty = asyncio.Event()
        self._cache_ok = asyncio.Event()
        self._cache_ok.set()
        self._draining = asyncio.Event()
        self._beat: HeartbeatSender | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self.runner: TaskRunner | None = None
        self.nc: NATS

    # ---- lifecycle -------------------------------------------------------------------
    async def run(self, nc: NATS, redis: aioredis.Redis, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain within ``drain_timeout``."""
        self.nc = nc
        store = TaskStore(
            redis,
            self.names,
            self.settings.result_ttl,
            min_replicas=self.settings.redis_min_replicas,
            wait_timeout=self.settings.redis_wait_timeout,
        )
        self.runner = TaskRunner(
            self.settings, self.agent_type, self.worker_id, self.handler, nc, store,
            self.inflight, self._set_cache_ok,
        )  # fmt: skip
        beat_task = self.start_heartbeat(nc)
        beat = self._beat
        assert beat is not None
        lease_task = spawn(self.inflight.keep_leases(), self._tasks)
        lanes = Lanes(nc, self.names, self.agent_type)
        await lanes.bind()
        await nc.subscribe(self.names.worker_control(self.agent_type), cb=self._on_control)
        await nc.subscribe(self.names.cancel_notice(), cb=self._on_cancel)
        await setup_handler(self.handler, self.settings)
        self.state = WorkerState.IDLE
        fetchers = {
            spawn(self._fetch_loop(lanes), self._tasks),
            spawn(self._high_loop(lanes), self._tasks),
        }
        await stop.wait()
        log.info("draining: %d task(s) in flight", len(self.inflight))
        self.state = WorkerState.DRAINING
        self._draining.set()
        self._slot_free.set()
        await beat.send_once()
        await asyncio.wait(fetchers, timeout=FETCH_TIMEOUT + 1)
        while self._ready:
            msg, entry = self._ready.popleft()
            self.inflight.release(entry)
            await safe(msg.nak())  # let a live worker have it now
        await self._drain()
        await close_handler(self.handler)
        self.state = WorkerState.STOPPED
        await beat.send_once()
        beat_task.cancel()
        lease_task.cancel()
        await lanes.close()

    def start_heartbeat(self, nc: NATS) -> asyncio.Task[None]:
        """Beat from now on, ``starting`` until :meth:`run` serves: a worker still waiting
        for Redis or JetStream (its host cut off, a quorum being re-formed) is alive, and
        its healer must not take the wait for a hang."""
        if self._beat_task is None:
            self.nc = nc
            self._beat = HeartbeatSender(
                nc,
                self.names.heartbeat(self.agent_type, self.worker_id),
                self.settings.heartbeat_interval,
                self.snapshot,
            )
            self._beat_task = spawn(self._beat.run(), self._tasks)
        return self._beat_task

    async def _drain(self) -> None:
        pending = await self.inflight.wait_handlers(self.settings.drain_timeout)
        for task in pending:
            task.cancel()  # the handler naks its message on cancellation
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _set_cache_ok(self, ok: bool) -> None:
        if ok:
            self._cache_ok.set()
            self._slot_free.set()
        else:
            self._cache_ok.clear()

    async def _on_control(self, msg: Msg) -> None:
        """``{"concurrency": n}`` lowers or raises how many tasks run at once (null: default)."""
        change = REJECTIONS.parse(
            lambda: WorkerControl.from_payload(msg.data, self.settings.max_concurrency)
        )
        if change is None:
            return
        self.concurrency = change.concurrency or self.default_concurrency
        log.info("concurrency set to %d by control message", self.concurrency)
        self._slot_free.set()

    async def _on_cancel(self, msg: Msg) -> None:
        """The healer marked a running task cancelled: stop it if it runs here."""
        request = REJECTIONS.parse(
            lambda: ControlRequest.from_payload(ControlVerb.CANCEL, msg.data), msg.subject
        )
        if request is not None and request.task_id and self.inflight.cancel(request.task_id):
            log.info("task %s cancelled by request", request.task_id)

    def snapshot(self) -> Heartbeat:
        c = self.runner.counters if self.runner is not None else None
        busy = self.state is WorkerState.IDLE and len(self.inflight) > 0
        return Heartbeat(
            worker_id=self.worker_id,
            agent_type=self.agent_type,
            host=self.host,
            pid=os.getpid(),
            slot=self.slot,
            state=WorkerState.BUSY if busy else self.state,
            in_flight=self.inflight.snapshot(),
            processed=c.processed if c else 0,
            failed=c.failed if c else 0,
            started_at=self.started_at,
            concurrency=self.concurrency,
            task_seconds_sum=round(c.task_seconds, 6) if c else 0.0,
            wait_seconds_sum=round(c.wait_seconds, 6) if c else 0.0,
            task_seconds_buckets=c.task_hist.counts() if c else [],
            wait_seconds_buckets=c.wait_hist.counts() if c else [],
            **LIMIT_STATS.heartbeat_fields(),
        )

    # ---- fetching --------------------------------------------------------------------
    def _running(self) -> int:
        return len(self.inflight.handlers)

    async def _wait(self, event: asyncio.Event) -> None:
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), 1.0)
        except TimeoutError:
            pass

    async def _fetch_loop(self, lanes: Lanes) -> None:
        while not self._draining.is_set():
            if self._ready and self._running() < self.concurrency:
                await self._start_ready()
                continue
            free = self.concurrency - len(self.inflight)
            if free <= 0 or not self._cache_ok.is_set():
                await self._wait(self._slot_free)
                continue
            try:
                msgs = await lanes.fetch(free)
            except Exception as exc:
                log.warning("fetch failed (%r); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            if self._draining.is_set():
                for msg in msgs:
                    await safe(msg.nak())  # let a live worker have it now
                continue
            batch = [(msg, self.inflight.register(msg)) for msg in msgs]
            if any(entry.delivery > 1 for _, entry in batch):
                await self._isolate_suspects(batch)
                continue
            await self._announce()
            room = self.concurrency - self._running()
            for msg, entry in batch[:room]:
                self._run(msg, entry)
            for msg, entry in batch[max(0, room) :]:  # a high task took a place meanwhile
                self.inflight.hold(msg, entry)
                self._ready.append((msg, entry))

    async def _high_loop(self, lanes: Lanes) -> None:
        """Keep a long-poll on the high lane; start what it takes, or put it first in line."""
        while not self._draining.is_set():
            if self._ready or not self._cache_ok.is_set():
                await self._wait(self._ready_empty)
                continue
            try:
                msgs = await lanes.fetch_high()
            except Exception as exc:
                log.warning("high-lane fetch failed (%r); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                if self._draining.is_set():
                    await safe(msg.nak())
                    continue
                entry = self.inflight.register(msg)
                if entry.delivery > 1 or self._running() >= self.concurrency:
                    self.inflight.hold(msg, entry)
                    self._ready.appendleft((msg, entry))
                    self._slot_free.set()
                    await self._announce()
                    continue
                await self._announce()
                self._run(msg, entry)

    async def _start_ready(self) -> None:
        """Start held messages, front first, while places are free."""
        while self._ready and self._running() < self.concurrency:
            msg, entry = self._ready.popleft()
            if entry.delivery > 1:
                await self._isolate_suspects([(msg, entry)])
            else:
                self._run(msg, entry)
        if not self._ready:
            self._ready_empty.set()
        await self._announce()

    def _run(self, msg: Msg, entry: InFlightEntry) -> asyncio.Task[Any]:
        assert self.runner is not None
        return self.inflight.start(self.runner.handle(msg, entry), entry)

    async def _isolate_suspects(self, batch: list[tuple[Msg, InFlightEntry]]) -> None:
        """Run redelivered tasks one at a time, with nothing else running beside them.

        A task that kills its worker is counted by the healer for every death it was
        running at; run alone, a redelivered task cannot make a bystander look like a
        poison task. Held messages keep their lease and are listed (not running) in
        heartbeats, so the healer naks them at once if this worker dies meanwhile.
        """
        for msg, entry in batch:
            self.inflight.hold(msg, entry)
        await self._announce()
        await self.inflight.wait_handlers()
        suspects = [(m, e) for m, e in batch if e.delivery > 1]
        fresh = [(m, e) for m, e in batch if e.delivery <= 1]
        for msg, entry in suspects:
            if self._draining.is_set():
                break
            task = self._run(msg, entry)
            await self._announce()
            await asyncio.wait({task})
        for msg, entry in suspects + fresh:  # what is still held: each message once
            if entry.running:
                continue
            if self._draining.is_set():
                self.inflight.release(entry)
                await safe(msg.nak())  # let a live worker have it now
                continue
            self._run(msg, entry)
        await self._announce()

    async def _announce(self) -> None:
        """Beat at once, written to the socket before new tasks run: if a task kills this
        process the kernel still sends what the socket holds, so the healer knows what it
        held and can redeliver it at once or dead-letter it.

        One yield lets the client's flusher write the beat (it was queued first); only when
        something is still unwritten after it (the flusher was busy) does the worker wait
        for a round trip. A PING per batch cost about a quarter of a worker's CPU.
        """
        if self._beat is None:
            return
        await self._beat.send_once(refresh=False)
        await asyncio.sleep(0)
        if self.nc.pending_data_size > 0:
            await safe(self.nc.flush(timeout=1))
