"""Workflow messages: requests to the orchestrator, the state it keeps, the events it publishes.

- ``agents.workflows.<verb>`` → an orchestrator: :class:`WorkflowRequest` in,
  :class:`~foundry.contracts.control.ControlReply` out (``get`` is answered by
  any orchestrator, the others by the leader only).
- The JetStream KV bucket of workflows holds one :class:`WorkflowState` per
  workflow id; only the leading orchestrator writes it.
- ``agents.events.workflow.<kind>``: :class:`WorkflowEvent`.

A step's task id is ``<workflow id>.<step>.<round>``: workflow ids and step
names carry no dots, so the id reads back unambiguously.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from foundry import codec
from foundry.contracts.fields import MAX_TEXT, Reader
from foundry.contracts.task import TASK_ID_RE
from foundry.names import AGENT_TYPE_RE

WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WORKFLOW_ID_HINT = "1-64 letters, digits, '_' or '-', starting with a letter or digit"
WORKFLOW_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
STEP_NAME_RE = WORKFLOW_NAME_RE
MAX_REQUEST_BYTES = 1024 * 1024
MAX_STATE_BYTES = 6 * 1024 * 1024
MAX_RUNS = 1024
_TIME_MAX = 1e11


class WorkflowStatus(StrEnum):
    """Where a workflow is."""

    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


class StepStatus(StrEnum):
    """Where one run of a step is (a step inside the loop runs once per round)."""

    RUNNING = "running"  # its task is submitted (queued or running on a worker)
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # its `when` condition was false

    @property
    def done(self) -> bool:
        """Finished in a way that lets the steps after it go on."""
        return self in (StepStatus.COMPLETED, StepStatus.SKIPPED)

    @property
    def final(self) -> bool:
        return self not in (StepStatus.RUNNING, StepStatus.WAITING_APPROVAL)


class WorkflowVerb(StrEnum):
    """Requests on ``agents.workflows.<verb>``."""

    START = "start"
    GET = "get"
    CANCEL = "cancel"
    APPROVE = "approve"


class WorkflowEventKind(StrEnum):
    """The token in ``agents.events.workflow.<kind>``."""

    STARTED = "started"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    ROUND = "round"  # the loop began another round
    WAITING_APPROVAL = "waiting_approval"
    APPROVED = "approved"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


def step_task_id(workflow_id: str, step: str, round_: int) -> str:
    return f"{workflow_id}.{step}.{round_}"


def parse_step_task_id(task_id: str) -> tuple[str, str, int] | None:
    """(workflow id, step, round) of a step's task id, else None."""
    parts = task_id.split(".")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    workflow_id, step, round_ = parts[0], parts[1], int(parts[2])
    if not WORKFLOW_ID_RE.fullmatch(workflow_id) or not STEP_NAME_RE.fullmatch(step):
        return None
    return workflow_id, step, round_


_req = Reader("workflow_request")


@dataclass(frozen=True)
class WorkflowRequest:
    """``start`` names a ``workflow`` and its ``input`` (``workflow_id`` optional: a retried
    start with the same id starts nothing new); the other verbs name a ``workflow_id``."""

    verb: WorkflowVerb
    workflow_id: str | None = None
    workflow: str | None = None
    input: dict[str, Any] | None = None
    submitted_by: str | None = None
    comment: str | None = None

    def to_payload(self) -> bytes:
        body = {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "input": self.input,
            "submitted_by": self.submitted_by,
            "comment": self.comment,
        }
        return codec.dumps({k: v for k, v in body.items() if v is not None})

    @classmethod
    def from_payload(cls, verb: WorkflowVerb, data: bytes) -> WorkflowRequest:
        body = _req.object(data, MAX_REQUEST_BYTES) if data.strip() else {}
        start = verb is WorkflowVerb.START
        workflow_id = _req.string(body, "workflow_id", required=not start, pattern=WORKFLOW_ID_RE)
        workflow = _req.string(body, "workflow", required=start, pattern=WORKFLOW_NAME_RE)
        task_input = body.get("input")
        if start and task_input is None:
            task_input = {}
        if task_input is not None:
            task_input = _req.mapping(task_input, "'input'")
        return cls(
            verb,
            workflow_id,
            workflow,
            task_input,
            _req.string(body, "submitted_by", required=False, max_len=200),
            _req.string(body, "comment", required=False, max_len=MAX_TEXT),
        )


_state = Reader("workflow_state")


@dataclass
class StepRun:
    """One run of a step: its task (none for an approval) and what came of it."""

    step: str
    round: int
    status: StepStatus
    agent_type: str | None = None
    task_id: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # time from the last step it waited for finishing to this one being submitted
    overhead_seconds: float | None = None
    result: Any = None
    output: Any = None  # what later steps see as {<step>…}: the result, or its `output` map
    error: str | None = None
    attempts: int = 0
    approved_by: str | None = None
    comment: str | None = None

    @property
    def key(self) -> str:
        return f"{self.step}.{self.round}"

    def to_json(self) -> dict[str, Any]:
        duration = None
        if self.started_at is not None and self.finished_at is not None:
            duration = round(self.finished_at - self.started_at, 6)
        return {
            "step": self.step,
            "round": self.round,
            "status": self.status,
            "agent_type": self.agent_type,
            "task_id": self.task_id,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": duration,
            "overhead_seconds": self.overhead_seconds,
            "result": self.result,
            "output": self.output,
            "error": self.error,
            "attempts": self.attempts,
            "approved_by": self.approved_by,
            "comment": self.comment,
        }

    @classmethod
    def from_json(cls, body: Any) -> StepRun:
        body = _state.mapping(body, "a step run")

        def when(key: str) -> Any:
            return _state.number(body, key, required=False, high=_TIME_MAX)

        return cls(
            step=_state.string(body, "step", pattern=STEP_NAME_RE),
            round=_state.integer(body, "round", low=1, high=10_000),
            status=_state.enum(body, "status", StepStatus),
            agent_type=_state.string(body, "agent_type", required=False, pattern=AGENT_TYPE_RE),
            task_id=_state.string(body, "task_id", required=False, pattern=TASK_ID_RE),
            submitted_at=when("submitted_at"),
            started_at=when("started_at"),
            finished_at=when("finished_at"),
            overhead_seconds=_state.number(body, "overhead_seconds", required=False),
            result=body.get("result"),
            output=body.get("output"),
            error=_state.string(body, "error", required=False, max_len=MAX_TEXT * 4),
            attempts=_state.integer(body, "attempts", required=False, default=0),
            approved_by=_state.string(body, "approved_by", required=False, max_len=200),
            comment=_state.string(body, "comment", required=False),
        )


@dataclass
class WorkflowState:
    """One workflow: its definition's name, input, status, loop round and every step run."""

    workflow_id: str
    workflow: str
    input: dict[str, Any]
    status: WorkflowStatus = WorkflowStatus.RUNNING
    round: int = 1
    loop_done: bool = False
    max_iterations: int = 0
    submitted_by: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    runs: dict[str, StepRun] = field(default_factory=dict)

    def run(self, step: str, round_: int) -> StepRun | None:
        return self.runs.get(f"{step}.{round_}")

    def add(self, run: StepRun) -> StepRun:
        self.runs[run.key] = run
        return run

    def by_task(self, task_id: str) -> StepRun | None:
        for run in self.runs.values():
            if run.task_id == task_id:
                return run
        return None

    def to_json(self) -> dict[str, Any]:
        duration = None
        if self.finished_at is not None:
            duration = round(self.finished_at - self.created_at, 6)
        return {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "status": self.status,
            "round": self.round,
            "max_iterations": self.max_iterations,
            "loop_done": self.loop_done,
            "input": self.input,
            "submitted_by": self.submitted_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "duration_seconds": duration,
            "error": self.error,
            "steps": [run.to_json() for run in self.runs.values()],
        }

    def to_payload(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_payload(cls, data: bytes) -> WorkflowState:
        body = _state.object(data, MAX_STATE_BYTES)
        task_input = _state.mapping(body.get("input", {}), "'input'")
        runs = _state.items(body, "steps", StepRun.from_json, max_items=MAX_RUNS)
        return cls(
            workflow_id=_state.string(body, "workflow_id", pattern=WORKFLOW_ID_RE),
            workflow=_state.string(body, "workflow", pattern=WORKFLOW_NAME_RE),
            input=task_input,
            status=_state.enum(body, "status", WorkflowStatus),
            round=_state.integer(body, "round", low=1, high=10_000),
            loop_done=_state.boolean(body, "loop_done", required=False),
            max_iterations=_state.integer(body, "max_iterations", required=False, default=0),
            submitted_by=_state.string(body, "submitted_by", required=False, max_len=200),
            created_at=_state.number(body, "created_at", high=_TIME_MAX),
            updated_at=_state.number(body, "updated_at", high=_TIME_MAX),
            finished_at=_state.number(body, "finished_at", required=False, high=_TIME_MAX),
            error=_state.string(body, "error", required=False, max_len=MAX_TEXT * 4),
            runs={run.key: run for run in runs},
        )


_event = Reader("workflow_event")
STATUS_COUNTS = tuple(s.value for s in WorkflowStatus if not s.final)


@dataclass(frozen=True)
class WorkflowEvent:
    """Something happened to a workflow; ``active`` counts the leader's unfinished
    workflows by status at that moment (the monitor's gauge)."""

    kind: WorkflowEventKind
    workflow_id: str
    workflow: str
    status: WorkflowStatus
    at: float = field(default_factory=time.time)
    round: int | None = None
    step: str | None = None
    agent_type: str | None = None
    task_id: str | None = None
    step_status: StepStatus | None = None
    duration_seconds: float | None = None
    overhead_seconds: float | None = None
    error: str | None = None
    active: dict[str, int] = field(default_factory=dict)

    def to_payload(self) -> bytes:
        return codec.dumps(
            {
                "kind": f"workflow.{self.kind.value}",
                "event": self.kind,
                "workflow_id": self.workflow_id,
                "workflow": self.workflow,
                "status": self.status,
                "at": self.at,
                "round": self.round,
                "step": self.step,
                "agent_type": self.agent_type,
                "task_id": self.task_id,
                "step_status": self.step_status,
                "duration_seconds": self.duration_seconds,
                "overhead_seconds": self.overhead_seconds,
                "error": self.error,
                "active": self.active,
            }
        )

    @classmethod
    def from_payload(cls, data: bytes) -> WorkflowEvent:
        body = _event.object(data, MAX_REQUEST_BYTES)
        active_raw = _event.mapping(body.get("active") or {}, "'active'")
        active = {}
        for status in STATUS_COUNTS:
            active[status] = _event.integer(active_raw, status, required=False, default=0)
        return cls(
            kind=_event.enum(body, "event", WorkflowEventKind),
            workflow_id=_event.string(body, "workflow_id", pattern=WORKFLOW_ID_RE),
            workflow=_event.string(body, "workflow", pattern=WORKFLOW_NAME_RE),
            status=_event.enum(body, "status", WorkflowStatus),
            at=_event.number(body, "at", high=_TIME_MAX),
            round=_event.integer(body, "round", required=False, low=1, high=10_000),
            step=_event.string(body, "step", required=False, pattern=STEP_NAME_RE),
            agent_type=_event.string(body, "agent_type", required=False, pattern=AGENT_TYPE_RE),
            task_id=_event.string(body, "task_id", required=False, pattern=TASK_ID_RE),
            step_status=_event.enum(body, "step_status", StepStatus, required=False),
            duration_seconds=_event.number(body, "duration_seconds", required=False),
            overhead_seconds=_event.number(body, "overhead_seconds", required=False),
            error=_event.string(body, "error", required=False, max_len=MAX_TEXT * 4),
            active=active,
        )
