"""One worker process: pull tasks of one agent type, run the handler, store, ack.

Delivery is at-least-once: a message is acked only after its result is stored
in Redis. While Redis is down the worker keeps the leases of what it holds,
stops fetching, and naks with a delay only after ``FOUNDRY_CACHE_WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from foundry import codec
from foundry.errors import CacheUnavailable, MalformedTask
from foundry.histogram import BucketCounts
from foundry.messages import (
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    RUNNING,
    Heartbeat,
    Task,
    parse_task,
    task_id_from,
)
from foundry.runtime import spawn
from foundry.settings import Settings
from foundry.store import TaskStore
from workers.handlers import (
    Handler,
    RetryableError,
    TaskContext,
    TaskFailed,
    close_handler,
    setup_handler,
)
from workers.heartbeat import HeartbeatSender

log = logging.getLogger(__name__)
T = TypeVar("T")
FETCH_TIMEOUT = 1.0  # shorter fetches stall now and then (DESIGN.md)
PROGRESS_NOTE_MAX = 200  # characters of a progress note carried in heartbeats


@dataclass
class InFlight:
    task_id: str
    stream_seq: int
    reply: str
    delivery: int
    started: float
    running: bool = True  # False while held back (see Worker._isolate_suspects)
    progress: str | None = None  # the handler's last ctx.progress() note
    progress_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "stream_seq": self.stream_seq,
            "reply": self.reply,
            "delivery": self.delivery,
            "started_at": self.started,
            "running": self.running,
            "progress": self.progress,
            "progress_at": self.progress_at,
        }


def _peek_task_id(msg: Msg, seq: int) -> str:
    """The task id as far as it is known before parsing (header, else the sequence id)."""
    return task_id_from(msg.headers, None, seq)


class Worker:
    """Owns the connections and the fetch loop of one worker process."""

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
        self.host = socket.gethostname()
        self.worker_id = worker_id or f"{agent_type}-{self.host}-{os.getpid()}"
        self.slot = slot
        self.state = "starting"
        self.processed = 0
        self.failed = 0
        self.task_seconds = 0.0
        self.wait_seconds = 0.0
        self.task_hist, self.wait_hist = BucketCounts(), BucketCounts()
        self.started_at = time.time()
        self.inflight: dict[int, InFlight] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slot_free = asyncio.Event()
        self._cache_ok = asyncio.Event()
        self._cache_ok.set()
        self._draining = asyncio.Event()
        self._beat: HeartbeatSender | None = None
        self._leases: dict[int, Msg] = {}  # stream seq → message whose handler is running
        self.nc: NATS
        self.js: JetStreamContext
        self.redis: aioredis.Redis
        self.store: TaskStore

    # ---- lifecycle -------------------------------------------------------------------
    async def run(self, nc: NATS, redis: aioredis.Redis, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain within ``drain_timeout``."""
        self.nc, self.redis = nc, redis
        self.js = nc.jetstream()
        self.store = TaskStore(redis, self.names, self.settings.result_ttl)
        beat = HeartbeatSender(
            nc,
            self.names.heartbeat(self.agent_type, self.worker_id),
            self.settings.heartbeat_interval,
            self.snapshot,
        )
        self._beat = beat
        beat_task = spawn(beat.run(), self._tasks)
        lease_task = spawn(self._keep_leases(), self._tasks)
        psub = await self.js.pull_subscribe_bind(
            durable=self.names.consumer(self.agent_type), stream=self.names.tasks_stream
        )
        await nc.subscribe(self.names.worker_control(self.agent_type), cb=self._on_control)
        await setup_handler(self.handler, self.settings)
        self.state = "idle"
        fetcher = spawn(self._fetch_loop(psub), self._tasks)
        await stop.wait()
        log.info("draining: %d task(s) in flight", len(self.inflight))
        self.state = "draining"
        self._draining.set()
        self._slot_free.set()
        await beat.send_once()
        await asyncio.wait({fetcher}, timeout=FETCH_TIMEOUT + 1)
        await self._drain()
        await close_handler(self.handler)
        self.state = "stopped"
        await beat.send_once()
        beat_task.cancel()
        lease_task.cancel()
        with contextlib.suppress(Exception):
            await psub.unsubscribe()

    async def _drain(self) -> None:
        handlers = [t for t in self._tasks if t.get_name().startswith("task:")]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self.settings.drain_timeout)
            for task in pending:
                task.cancel()  # the handler naks its message on cancellation
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _on_control(self, msg: Msg) -> None:
        """``{"concurrency": n}`` lowers or raises how many tasks run at once (null: default)."""
        try:
            body = codec.loads(msg.data)
            if "concurrency" in body:
                level = body["concurrency"]
                self.concurrency = max(1, int(level)) if level else self.default_concurrency
                log.info("concurrency set to %d by control message", self.concurrency)
                self._slot_free.set()
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignored malformed control message: %s", exc)

    def snapshot(self) -> Heartbeat:
        busy = self.state == "idle" and self.inflight
        return Heartbeat(
            worker_id=self.worker_id,
            agent_type=self.agent_type,
            host=self.host,
            pid=os.getpid(),
            slot=self.slot,
            state="busy" if busy else self.state,
            in_flight=[f.to_json() for f in self.inflight.values()],
            processed=self.processed,
            failed=self.failed,
            started_at=self.started_at,
            concurrency=self.concurrency,
            task_seconds_sum=round(self.task_seconds, 6),
            wait_seconds_sum=round(self.wait_seconds, 6),
            task_seconds_buckets=self.task_hist.counts(),
            wait_seconds_buckets=self.wait_hist.counts(),
        )

    # ---- fetching --------------------------------------------------------------------
    async def _fetch_loop(self, psub: JetStreamContext.PullSubscription) -> None:
        while not self._draining.is_set():
            free = self.concurrency - len(self.inflight)
            if free <= 0 or not self._cache_ok.is_set():
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), 1.0)
                continue
            try:
                msgs = await psub.fetch(free, timeout=FETCH_TIMEOUT)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                log.warning("fetch failed (%r); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if self._draining.is_set():
                for msg in msgs:
                    await self._safe(msg.nak())  # let a live worker have it now
                continue
            batch = [(msg, self._register(msg)) for msg in msgs]
            if any(entry.delivery > 1 for _, entry in batch):
                await self._isolate_suspects(batch)
                continue
            await self._announce()
            for msg, entry in batch:
                self._run(msg, entry)

    def _run(self, msg: Msg, entry: InFlight) -> asyncio.Task[Any]:
        entry.running = True
        self._leases.pop(entry.stream_seq, None)  # the handler keeps its own lease from here
        task = spawn(self._handle(msg, entry), self._tasks)
        task.set_name(f"task:{entry.stream_seq}")
        return task

    async def _isolate_suspects(self, batch: list[tuple[Msg, InFlight]]) -> None:
        """Run redelivered tasks one at a time, with nothing else running beside them.

        A task that kills its worker is counted by the healer for every death it was
        running at; run alone, a redelivered task cannot make a bystander look like a
        poison task. Held messages keep their lease and are listed (not running) in
        heartbeats, so the healer naks them at once if this worker dies meanwhile.
        """
        for msg, entry in batch:
            entry.running = False
            self._leases[entry.stream_seq] = msg
        await self._announce()
        running = [t for t in self._tasks if t.get_name().startswith("task:")]
        if running:
            await asyncio.wait(running)
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
                self._leases.pop(entry.stream_seq, None)
                self.inflight.pop(entry.stream_seq, None)
                await self._safe(msg.nak())  # let a live worker have it now
                continue
            self._run(msg, entry)
        await self._announce()

    def _register(self, msg: Msg) -> InFlight:
        meta = msg.metadata
        seq = meta.sequence.stream
        entry = InFlight(_peek_task_id(msg, seq), seq, msg.reply, meta.num_delivered, time.time())
        self.inflight[seq] = entry
        return entry

    async def _announce(self) -> None:
        """Beat at once, flushed, before new tasks run: if a task kills this process the
        healer still knows what it held, and can redeliver it at once or dead-letter it."""
        if self._beat is None:
            return
        await self._beat.send_once(refresh=False)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=1)

    # ---- one message -----------------------------------------------------------------
    async def _handle(self, msg: Msg, entry: InFlight) -> None:
        try:
            await self._process(msg, entry)
        except asyncio.CancelledError:
            await self._safe(msg.nak())
        except Exception:
            log.exception("unexpected error handling stream seq %s; nak", entry.stream_seq)
            await self._safe(msg.nak(delay=self.settings.retry_delay))
        finally:
            self.inflight.pop(entry.stream_seq, None)
            self._slot_free.set()

    async def _process(self, msg: Msg, entry: InFlight) -> None:
        meta = msg.metadata
        stored_at = meta.timestamp.timestamp()
        try:
            task = parse_task(
                msg.data,
                msg.headers,
                self.agent_type,
                entry.stream_seq,
                self.settings.max_task_bytes,
            )
        except MalformedTask as exc:
            entry.task_id = exc.task_id  # type: ignore[attr-defined]
            await self._finish(msg, entry, FAILED, None, f"malformed task: {exc}", 0.0)
            return
        entry.task_id = task.task_id
        claim = await self._cache(
            msg,
            lambda: self.store.claim(
                task.task_id,
                self.agent_type,
                entry.delivery,
                self.worker_id,
                task.submitted_at or stored_at,
            ),
        )
        if claim is None:
            return
        if claim in FINAL_STATUSES:  # a duplicate delivery of a finished task
            # its worker may have died between storing the result and announcing it:
            # announce again so long-polls wake, then ack
            await self._event(claim, task.task_id, attempt=entry.delivery, duplicate=True)
            await self._safe(msg.ack())
            return
        if claim == "stale":  # a later delivery owns this task now
            return
        waited = max(0.0, time.time() - (task.submitted_at or stored_at))
        self.wait_seconds += waited
        self.wait_hist.observe(waited)
        await self._event(
            RUNNING, task.task_id, attempt=entry.delivery, wait_seconds=round(waited, 6)
        )
        status, result, error, elapsed = await self._run_handler(msg, task, entry)
        if status is None:
            return  # retry requested: already nak'ed
        await self._finish(msg, entry, status, result, error, elapsed)

    async def _run_handler(
        self, msg: Msg, task: Task, entry: InFlight
    ) -> tuple[str | None, Any, str | None, float]:
        lease_every = min(0.5, self.settings.ack_wait / 4)
        last_lease = -lease_every

        async def progress(note: str | None) -> None:
            nonlocal last_lease
            if note is not None:
                entry.progress = note[:PROGRESS_NOTE_MAX]
            entry.progress_at = time.time()
            now = time.monotonic()
            if now - last_lease >= lease_every:  # a handler may call this per streamed token
                last_lease = now
                await self._safe(msg.in_progress())

        ctx = TaskContext(
            task_id=task.task_id,
            agent_type=self.agent_type,
            description=task.description,
            input=task.input,
            attempt=entry.delivery,
            worker_id=self.worker_id,
            settings=self.settings,
            _progress=progress,
            submitted_by=task.submitted_by,
        )
        self._leases[entry.stream_seq] = msg
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.task_timeout):
                result = await self.handler(ctx)
            return COMPLETED, result, None, time.monotonic() - started
        except RetryableError as exc:
            delay = exc.delay if exc.delay is not None else self.settings.retry_delay
            log.info("task %s asked for a retry in %.1fs: %s", task.task_id, delay, exc)
            await self._safe(msg.nak(delay=delay))
            return None, None, None, 0.0
        except TaskFailed as exc:
            return FAILED, exc.result, str(exc), time.monotonic() - started
        except TimeoutError:
            ctx.cancelled.set()
            limit = self.settings.task_timeout
            return FAILED, None, f"timed out after {limit:g}s (FOUNDRY_TASK_TIMEOUT)", limit
        except asyncio.CancelledError:
            ctx.cancelled.set()
            raise
        except Exception as exc:
            return FAILED, None, f"{type(exc).__name__}: {exc}", time.monotonic() - started
        finally:
            self._leases.pop(entry.stream_seq, None)

    async def _finish(
        self, msg: Msg, entry: InFlight, status: str, result: Any, error: str | None, took: float
    ) -> None:
        try:
            codec.dumps(result)
        except TypeError as exc:
            status, result, error = FAILED, None, f"result is not JSON-serialisable: {exc}"
        outcome = await self._cache(
            msg,
            lambda: self.store.finish(
                entry.task_id,
                self.agent_type,
                entry.delivery,
                self.worker_id,
                status,
                result,
                error,
            ),
        )
        if outcome is None or outcome == "stale":
            return  # nak'ed for a cache outage, or a later delivery owns the task: no ack
        if outcome == "ok":
            self.task_seconds += took
            self.task_hist.observe(took)
            if status == COMPLETED:
                self.processed += 1
            else:
                self.failed += 1
            await self._event(
                status,
                entry.task_id,
                attempt=entry.delivery,
                error=error,
                duration_seconds=round(took, 6),
            )
        await self._safe(msg.ack())

    # ---- helpers ---------------------------------------------------------------------
    async def _cache(self, msg: Msg, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run a Redis operation; while Redis is down keep the lease and retry, bounded."""
        deadline = time.monotonic() + self.settings.cache_wait
        delay = 0.1
        while True:
            try:
                out = await op()
                self._cache_ok.set()
                self._slot_free.set()
                return out
            except CacheUnavailable as exc:
                self._cache_ok.clear()
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "Redis still down after %.0fs; nak: %s", self.settings.cache_wait, exc
                    )
                    await self._safe(msg.nak(delay=self.settings.retry_delay))
                    return None
                log.debug("Redis down, holding the task: %s", exc)
                await self._safe(msg.in_progress())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _keep_leases(self) -> None:
        """One loop for the whole worker: extend the lease of every handler still running
        after a third of ``ack_wait`` (a task per handler costs more than the work here)."""
        period = max(0.2, self.settings.ack_wait / 3)
        since: dict[int, float] = {}
        while True:
            await asyncio.sleep(period / 4)
            now = time.monotonic()
            for seq in [s for s in since if s not in self._leases]:
                del since[seq]
            for seq, msg in list(self._leases.items()):
                if now - since.setdefault(seq, now) >= period:
                    since[seq] = now
                    await self._safe(msg.in_progress())

    async def _event(self, status: str, task_id: str, **fields: Any) -> None:
        body = codec.dumps(
            {
                "kind": f"task.{status}",
                "at": time.time(),
                "task_id": task_id,
                "agent_type": self.agent_type,
                "status": status,
                "worker_id": self.worker_id,
                **fields,
            }
        )
        await self._safe(self.nc.publish(self.names.task_event(status, self.agent_type), body))

    @staticmethod
    async def _safe(aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception as exc:  # a lost ack or event is recovered by redelivery
            log.debug("nats op failed: %r", exc)
