"""What the orchestrator does to the outside world: submit step tasks, cancel them, announce.

A step's task is submitted as the gateway submits one (recorded ``queued`` in the
task store, published with ``Nats-Msg-Id`` = its id, a ``task.queued`` event),
but only after the task store was asked first: a task whose result is already
stored is never submitted again, its record is handed back instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from foundry import codec
from foundry.contracts import (
    MSG_ID_HEADER,
    ControlReply,
    MessageRejected,
    Task,
    TaskEvent,
    TaskStatus,
)
from foundry.contracts.workflow import StepRun, WorkflowEvent, WorkflowEventKind, WorkflowState
from foundry.names import Names
from foundry.store import TaskRecord, TaskStore

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 3.0
CANCEL_TIMEOUT = 2.0
# A task still queued this long after its submission is not published again: beyond the
# stream's duplicate window a second copy would not be recognised as the same task.
REPUBLISH_MARGIN = 60.0


class Steps:
    def __init__(self, nc: NATS, store: TaskStore, names: Names, duplicate_window: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self.store = store
        self.names = names
        self.duplicate_window = duplicate_window

    async def submit(
        self, state: WorkflowState, run: StepRun, description: str, task_input: Any
    ) -> TaskRecord | None:
        """Submit ``run``'s task unless the store knows it: a final record is returned (the
        step is done already), one queued or running is left to its worker."""
        assert run.task_id is not None and run.agent_type is not None
        record = await self.store.get(run.task_id)
        if record is not None and record.final:
            return record
        if record is not None and record.status != TaskStatus.QUEUED:
            return None  # a worker runs it
        if record is not None and time.time() - (run.submitted_at or 0) > self._republish_horizon:
            return None  # published long ago: a copy now could run it twice
        created = await self.store.queue(run.task_id, run.agent_type)
        task = Task(
            run.task_id,
            run.agent_type,
            description,
            task_input,
            time.time(),
            state.submitted_by or f"workflow:{state.workflow_id}",
        )
        subject = self.names.tasks(run.agent_type)
        await self.js.publish(subject, task.to_payload(), headers={MSG_ID_HEADER: run.task_id})
        if created == "created":
            event = TaskEvent(TaskStatus.QUEUED, run.task_id, run.agent_type)
            await self.nc.publish(
                self.names.task_event(TaskStatus.QUEUED, run.agent_type), event.to_payload()
            )
        return None

    @property
    def _republish_horizon(self) -> float:
        return max(0.0, self.duplicate_window - REPUBLISH_MARGIN)

    async def cancel(self, task_id: str) -> str:
        """Ask the healer to cancel a task; its answer (``cancelled``, ``cancelling``, …)."""
        body = codec.dumps({"task_id": task_id})
        try:
            msg = await self.nc.request(self.names.control("cancel"), body, CANCEL_TIMEOUT)
            reply = ControlReply.from_payload(msg.data)
        except (nats.errors.Error, TimeoutError, MessageRejected) as exc:
            log.warning("cancel of %s got no answer (%r); its result will be ignored", task_id, exc)
            return "no_answer"
        if not reply.ok:
            return str(reply.body.get("status") or reply.code)
        return str(reply.body.get("status", "cancelling"))

    async def announce(
        self,
        state: WorkflowState,
        kind: WorkflowEventKind,
        run: StepRun | None,
        active: dict[str, int],
    ) -> None:
        duration = None
        if run is not None and run.started_at is not None and run.finished_at is not None:
            duration = max(0.0, run.finished_at - run.started_at)
        elif run is None and state.finished_at is not None:
            duration = max(0.0, state.finished_at - state.created_at)
        event = WorkflowEvent(
            kind=kind,
            workflow_id=state.workflow_id,
            workflow=state.workflow,
            status=state.status,
            round=state.round,
            step=run.step if run else None,
            agent_type=run.agent_type if run else None,
            task_id=run.task_id if run else None,
            step_status=run.status if run else None,
            duration_seconds=duration,
            overhead_seconds=run.overhead_seconds if run and kind.value == "step_started" else None,
            error=(run.error if run else state.error),
            active=active,
        )
        try:
            await self.nc.publish(self.names.workflow_event(kind.value), event.to_payload())
        except nats.errors.Error as exc:  # the state is stored: an event is only news
            log.debug("workflow event not published: %r", exc)
