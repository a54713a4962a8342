"""Running one delivered task: parse, claim, run the handler, store the result, ack.

Delivery is at-least-once: a message is acked only after its result is stored
in Redis. While Redis is down the worker keeps the lease, stops fetching, and
naks with a delay only after ``FOUNDRY_CACHE_WAIT``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec, tracing
from foundry.contracts import (
    FINAL_STATUSES,
    PROGRESS_NOTE_MAX,
    InFlightEntry,
    Task,
    TaskEvent,
    TaskStatus,
    parse_task,
)
from foundry.errors import CacheUnavailable, MalformedTask
from foundry.histogram import BucketCounts
from foundry.settings import Settings
from foundry.store import TaskStore
from workers.handlers import Handler, RetryableError, TaskContext, TaskFailed
from workers.leases import InFlight, safe
from workers.output import OutputEmitter

log = logging.getLogger(__name__)
T = TypeVar("T")
Outcome = tuple[TaskStatus | None, Any, str | None, float]


@dataclass
class Counters:
    """What the worker reports in its heartbeats."""

    processed: int = 0
    failed: int = 0
    task_seconds: float = 0.0
    wait_seconds: float = 0.0
    task_hist: BucketCounts = field(default_factory=BucketCounts)
    wait_hist: BucketCounts = field(default_factory=BucketCounts)


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        agent_type: str,
        worker_id: str,
        handler: Handler,
        nc: NATS,
        store: TaskStore,
        inflight: InFlight,
        cache_state: Callable[[bool], None],
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.agent_type = agent_type
        self.worker_id = worker_id
        self.handler = handler
        self.nc = nc
        self.store = store
        self.inflight = inflight
        self.cache_state = cache_state  # tells the fetch loop whether Redis answers
        self.counters = Counters()

    async def handle(self, msg: Msg, entry: InFlightEntry) -> None:
        try:
            await self._process(msg, entry)
        except asyncio.CancelledError:
            if not self.inflight.cancel_requested(entry):
                await safe(msg.nak())  # drained or stopped: another worker takes it
                return
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._finish(msg, entry, TaskStatus.CANCELLED, None, "cancelled by request", 0)
        except Exception:
            log.exception("unexpected error handling stream seq %s; nak", entry.stream_seq)
            await safe(msg.nak(delay=self.settings.retry_delay))
        finally:
            self.inflight.release(entry)
            self.cache_state(True)

    async def _process(self, msg: Msg, entry: InFlightEntry) -> None:
        stored_at = msg.metadata.timestamp.timestamp()
        try:
            task = parse_task(
                msg.data, msg.headers, self.agent_type, entry.stream_seq,
                self.settings.max_task_bytes,
            )  # fmt: skip
        except MalformedTask as exc:
            entry.task_id = exc.task_id
            failed = f"malformed task: {exc.reason}"
            await self._finish(msg, entry, TaskStatus.FAILED, None, failed, 0.0)
            return
        entry.task_id = task.task_id
        # one span per delivery, under the publisher's traceparent when it sent one
        with tracing.current().span(
            "task", parent=msg.headers or {}, kind="consumer",
            attributes={"task.id": task.task_id, "agent.type": self.agent_type,
                        "task.attempt": entry.delivery},
        ):  # fmt: skip
            await self._claim_and_run(msg, entry, task, task.submitted_at or stored_at)

    async def _claim_and_run(
        self, msg: Msg, entry: InFlightEntry, task: Task, submitted: float
    ) -> None:
        claim = await self._cache(
            msg,
            lambda: self.store.claim(
                task.task_id, self.agent_type, entry.delivery, self.worker_id, submitted
            ),
        )
        if claim is None:
            return
        if claim in FINAL_STATUSES:  # a finished (or cancelled) task: never run it again
            # its worker may have died between storing the result and announcing it:
            # announce again so long-polls wake, then ack
            await self._event(TaskStatus(claim), task.task_id, entry.delivery, duplicate=True)
            await safe(msg.ack())
            return
        if claim == "stale":  # a later delivery owns this task now
            return
        now = time.time()
        waited = max(0.0, now - submitted)
        tracer = tracing.current()
        if tracer.enabled:
            tracer.record(
                "queue wait", submitted, now,
                attributes={"task.id": task.task_id, "agent.type": self.agent_type,
                            "task.attempt": entry.delivery},
            )  # fmt: skip
        self.counters.wait_seconds += waited
        self.counters.wait_hist.observe(waited)
        await self._event(
            TaskStatus.RUNNING, task.task_id, entry.delivery, wait_seconds=round(waited, 6)
        )
        status, result, error, elapsed = await self._run_handler(msg, task, entry)
        if status is None:
            return  # retry requested: already nak'ed
        await self._finish(msg, entry, status, result, error, elapsed)

    async def _run_handler(self, msg: Msg, task: Task, entry: InFlightEntry) -> Outcome:
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
                await safe(msg.in_progress())

        emitter = OutputEmitter(
            self.nc, self.store, self.names.output(self.agent_type, task.task_id),
            task.task_id, self.agent_type, entry.delivery, self.settings.output_max_bytes,
        )  # fmt: skip
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
            _emit=emitter.emit,
        )
        self.inflight.lease(msg, entry)
        started = time.monotonic()
        span = tracing.current().span(
            "handler run",
            attributes={"task.id": task.task_id, "agent.type": self.agent_type,
                        "task.attempt": entry.delivery, "worker.id": self.worker_id},
        )  # fmt: skip
        try:
            with span:
                async with asyncio.timeout(self.settings.task_timeout):
                    result = await self.handler(ctx)
            await emitter.close()  # the output is stored before the final status
            return TaskStatus.COMPLETED, result, None, time.monotonic() - started
        except RetryableError as exc:
            delay = exc.delay if exc.delay is not None else self.settings.retry_delay
            log.info("task %s asked for a retry in %.1fs: %s", task.task_id, delay, exc)
            await safe(msg.nak(delay=delay))
            return None, None, None, 0.0
        except TaskFailed as exc:
            await emitter.close()
            return TaskStatus.FAILED, exc.result, str(exc), time.monotonic() - started
        except TimeoutError:
            ctx.cancelled.set()
            await emitter.close()
            limit = self.settings.task_timeout
            return (
                TaskStatus.FAILED,
                None,
                f"timed out after {limit:g}s (FOUNDRY_TASK_TIMEOUT)",
                limit,
            )
        except asyncio.CancelledError:
            ctx.cancelled.set()
            raise
        except Exception as exc:
            took = time.monotonic() - started
            await emitter.close()
            return TaskStatus.FAILED, None, f"{type(exc).__name__}: {exc}", took
        finally:
            self.inflight.unlease(entry)

    async def _finish(
        self,
        msg: Msg,
        entry: InFlightEntry,
        status: TaskStatus,
        result: Any,
        error: str | None,
        took: float,
    ) -> None:
        try:
            codec.dumps(result)
        except TypeError as exc:
            status, result = TaskStatus.FAILED, None
            error = f"result is not JSON-serialisable: {exc}"
        with tracing.current().span(
            "result store",
            attributes={"task.id": entry.task_id, "task.status": status.value},
        ):  # fmt: skip
            outcome = await self._cache(
                msg,
                lambda: self.store.finish(
                    entry.task_id, self.agent_type, entry.delivery, self.worker_id, status,
                    result, error,
                ),
            )  # fmt: skip
        if outcome is None or outcome == "stale":
            return  # nak'ed for a cache outage, or a later delivery owns the task: no ack
        if outcome == "cancelled":
            status, error = TaskStatus.CANCELLED, "cancelled by request"
        if outcome in ("ok", "cancelled"):
            c = self.counters
            c.task_seconds += took
            c.task_hist.observe(took)
            if status is TaskStatus.COMPLETED:
                c.processed += 1
            elif status is TaskStatus.FAILED:
                c.failed += 1
            await self._event(
                status, entry.task_id, entry.delivery, error=error, duration_seconds=round(took, 6)
            )
        await safe(msg.ack())

    async def _cache(self, msg: Msg, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run a Redis operation; while Redis is down keep the lease and retry, bounded."""
        deadline = time.monotonic() + self.settings.cache_wait
        delay = 0.1
        while True:
            try:
                out = await op()
                self.cache_state(True)
                return out
            except CacheUnavailable as exc:
                self.cache_state(False)
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "Redis still down after %.0fs; nak: %s", self.settings.cache_wait, exc
                    )
                    await safe(msg.nak(delay=self.settings.retry_delay))
                    return None
                log.debug("Redis down, holding the task: %s", exc)
                await safe(msg.in_progress())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _event(self, status: TaskStatus, task_id: str, attempt: int, **fields: Any) -> None:
        event = TaskEvent(
            status, task_id, self.agent_type, worker_id=self.worker_id, attempt=attempt, **fields
        )
        subject = self.names.task_event(status, self.agent_type)
        await safe(self.nc.publish(subject, event.to_payload()))
