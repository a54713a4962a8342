"""The orchestrator service: owns the connections, the leader lease and the workflows it leads.

Every orchestrator answers ``get``. One of them — the holder of the lease
``orchestrator`` in the lease bucket — leads: it listens for start, cancel and
approve and for task events, and is the only writer of workflow state. When it
becomes leader it reads every unfinished workflow from the bucket and checks
each running step against the task store (a result stored while no one led is
taken; a task that never reached the queue is submitted), and it does so again
every few seconds and after a reconnect, so a missed event only delays a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from foundry.connect import connect_nats, connect_redis
from foundry.contracts import FINAL_STATUSES, HealAction, HealEvent, TaskEvent, TaskStatus
from foundry.contracts.workflow import (
    STATUS_COUNTS,
    StepStatus,
    WorkflowState,
    WorkflowVerb,
    parse_step_task_id,
)
from foundry.lease import Lease, election_details
from foundry.natsauth import ORCHESTRATOR
from foundry.provision import ensure_buckets
from foundry.rejections import REJECTIONS
from foundry.runtime import spawn
from foundry.settings import Settings
from foundry.store import TaskRecord, TaskStore
from orchestrator.control import Control
from orchestrator.definition import Definition
from orchestrator.engine import Announce, CancelTask, Effect, Engine, Submit
from orchestrator.errors import StateConflict
from orchestrator.statestore import StateStore
from orchestrator.steps import Steps

log = logging.getLogger(__name__)
LEASE_KEY = "orchestrator"
QUEUE = "orchestrators"
SWEEP_SECONDS = 2.0
WRITE_ATTEMPTS = 3
Fact = Callable[[Engine, WorkflowState], list[Effect]]


class Orchestrator:
    def __init__(self, settings: Settings, definitions: dict[str, Definition]) -> None:
        self.settings = settings
        self.names = settings.names
        self.engines = {name: Engine(d) for name, d in definitions.items()}
        self.active: dict[str, tuple[WorkflowState, int]] = {}
        self.lock = asyncio.Lock()
        self.leading = False
        self.control = Control(self)
        self._lead_subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.nc: NATS
        self.redis: aioredis.Redis
        self.states: StateStore
        self.steps: Steps
        self.lease: Lease

    # ---- lifecycle -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.nc = await connect_nats(settings, ORCHESTRATOR, reconnected_cb=self._reconnected)
        try:
            self.redis = await connect_redis(settings)
            js = self.nc.jetstream()
            await ensure_buckets(js, settings)
            self.states = StateStore(js, self.names)
            store = TaskStore(self.redis, self.names, settings.result_ttl)
            self.steps = Steps(self.nc, store, self.names, settings.duplicate_window)
            get = self.control.callback(WorkflowVerb.GET)
            await self.nc.subscribe(self.names.workflows("get"), queue=QUEUE, cb=get)
            self.lease = Lease(js, self.names.lease_bucket, LEASE_KEY, settings.lease_ttl)
            spawn(self._sweep(stop), self._tasks)
            log.info("orchestrator %s standing by: %s", self.lease.holder, settings.describe())
            await self.lease.run(stop, self._elected, self._lost)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await self.nc.drain() if self.nc.is_connected else await self.nc.close()
            with contextlib.suppress(AttributeError):
                await self.redis.aclose()

    async def _elected(self) -> None:
        began = time.monotonic()
        self.leading = True
        nc, names = self.nc, self.names
        for status in FINAL_STATUSES:  # not task.running or task.queued: half the traffic
            subject = names.task_event(status, "*")
            self._lead_subs.append(await nc.subscribe(subject, cb=self._on_task_event))
        for verb in (WorkflowVerb.START, WorkflowVerb.CANCEL, WorkflowVerb.APPROVE):
            cb = self.control.callback(verb)
            self._lead_subs.append(await nc.subscribe(names.workflows(verb), queue=QUEUE, cb=cb))
        async with self.lock:
            for workflow_id in await self.states.ids():
                entry = await self.states.get(workflow_id)
                if entry is not None and not entry[0].status.final:
                    self.active[workflow_id] = entry
        await self.resume()
        log.info("orchestrator %s leads: %d unfinished workflow(s) resumed in %.3fs",
                 self.lease.holder, len(self.active), time.monotonic() - began)  # fmt: skip
        event = HealEvent(HealAction.LEADER, self.settings.host_id,
                          details=election_details(self.lease))  # fmt: skip
        with contextlib.suppress(Exception):  # the event is a record; leading does not wait on it
            await nc.publish(names.heal_event(HealAction.LEADER.value), event.to_payload())

    async def _lost(self) -> None:
        self.leading = False
        subs, self._lead_subs = self._lead_subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        async with self.lock:
            self.active.clear()
        log.warning("orchestrator %s no longer leads", self.lease.holder)

    async def _reconnected(self) -> None:
        if self.leading:
            spawn(self.resume(), self._tasks)

    async def _sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(SWEEP_SECONDS)
            if self.leading:
                try:
                    await self.resume()
                except Exception as exc:
                    log.warning("sweep of running steps failed (%r); next in %gs", exc,
                                SWEEP_SECONDS)  # fmt: skip

    # ---- facts -----------------------------------------------------------------------
    async def resume(self) -> None:
        """Check every running step of every led workflow against the task store."""
        for workflow_id in list(self.active):
            async with self.lock:
                await self._check_runs(workflow_id)

    async def _check_runs(self, workflow_id: str) -> None:
        entry = self.active.get(workflow_id)
        engine = self.engines.get(entry[0].workflow) if entry else None
        if entry is None or engine is None:
            return
        state = entry[0]
        for run in list(state.runs.values()):
            if run.status is not StepStatus.RUNNING or run.task_id is None:
                continue
            record = await self.steps.store.get(run.task_id)
            if record is None or record.status == TaskStatus.QUEUED:
                task = engine.task_of(state, run)
                record = await self.steps.submit(state, run, task.description, task.input)
            if record is not None and record.final:
                await self._change_locked(workflow_id, _finished(record))

    async def _on_task_event(self, msg: Msg) -> None:
        event = REJECTIONS.parse(lambda: TaskEvent.from_payload(msg.data), msg.subject)
        if event is None or not event.status.final:
            return
        parsed = parse_step_task_id(event.task_id)
        if parsed is None or parsed[0] not in self.active:
            return
        try:
            record = await self.steps.store.get(event.task_id)
            if record is not None and record.final:
                await self.change(parsed[0], _finished(record))
        except Exception as exc:  # the sweep takes it up again
            log.warning("step %s not taken in yet: %r", event.task_id, exc)

    async def start(
        self, engine: Engine, workflow_id: str, task_input: dict[str, Any], by: str | None
    ) -> tuple[WorkflowState, bool]:
        """A new workflow (or the one that has this id already: duplicate True)."""
        async with self.lock:
            existing = await self.states.get(workflow_id)
            if existing is not None:
                return existing[0], True
            state, effects = engine.start(workflow_id, task_input, by, time.time())
            try:
                revision = await self.states.create(state)
            except StateConflict:
                again = await self.states.get(workflow_id)
                if again is None:
                    raise
                return again[0], True
            if not state.status.final:
                self.active[workflow_id] = (state, revision)
            await self._carry_out(state, effects)
            return state, False

    async def change(self, workflow_id: str, fact: Fact) -> WorkflowState:
        """Apply ``fact`` to a workflow, store it, then carry out what it asks for.
        KeyError: no such workflow."""
        async with self.lock:
            return await self._change_locked(workflow_id, fact)

    async def _change_locked(self, workflow_id: str, fact: Fact) -> WorkflowState:
        for _ in range(WRITE_ATTEMPTS):
            entry = self.active.get(workflow_id) or await self.states.get(workflow_id)
            if entry is None:
                raise KeyError(workflow_id)
            state, revision = entry
            engine = self.engines.get(state.workflow)
            if engine is None:
                raise KeyError(workflow_id)
            try:
                effects = fact(engine, state)
                if effects:
                    revision = await self.states.update(state, revision)
            except StateConflict:
                self.active.pop(workflow_id, None)  # read again: someone else wrote it
                continue
            except BaseException:
                self.active.pop(workflow_id, None)  # the stored state is the truth
                raise
            if state.status.final:
                self.active.pop(workflow_id, None)
            elif self.leading:
                self.active[workflow_id] = (state, revision)
            await self._carry_out(state, effects)
            return state
        raise StateConflict(f"workflow {workflow_id} kept changing under this orchestrator")

    async def _carry_out(self, state: WorkflowState, effects: list[Effect]) -> None:
        done: list[TaskRecord] = []
        for effect in effects:
            try:
                if isinstance(effect, Submit):
                    record = await self.steps.submit(
                        state, effect.run, effect.description, effect.input
                    )
                    if record is not None:
                        done.append(record)  # stored before: the step never runs again
                elif isinstance(effect, Announce):
                    await self.steps.announce(state, effect.kind, effect.run, self.counts())
                elif isinstance(effect, CancelTask):
                    await self.steps.cancel(effect.task_id)
            except Exception as exc:  # the sweep submits what did not go out
                log.warning("workflow %s: %s not done yet (%r)", state.workflow_id,
                            type(effect).__name__, exc)  # fmt: skip
        for record in done:
            await self._change_locked(state.workflow_id, _finished(record))

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUS_COUNTS, 0)
        for state, _ in self.active.values():
            out[state.status] = out.get(state.status, 0) + 1
        return out


def _finished(record: TaskRecord) -> Fact:
    return lambda engine, state: engine.on_task(state, record, time.time())
