"""Typed contracts for every message that crosses a process.

Each class parses from bytes with validation (raising :class:`MessageRejected`,
which names the kind and a short reason) and serialises to bytes. Producers and
consumers use the same class; the enums are the only vocabulary of states,
reasons and actions.
"""

from foundry.contracts.control import ControlReply, ControlRequest, WorkerControl
from foundry.contracts.deadletter import DeadLetter, MaxDeliveriesAdvisory
from foundry.contracts.enums import (
    FINAL_STATUSES,
    ControlVerb,
    DeadLetterAction,
    HealAction,
    OutputStream,
    RelaunchReason,
    SlotKind,
    SlotState,
    StopReason,
    TaskStatus,
    WorkerState,
    values,
)
from foundry.contracts.events import HealEvent, TaskEvent
from foundry.contracts.fields import MessageRejected
from foundry.contracts.heartbeat import (
    ACK_SUBJECT_RE,
    PROGRESS_NOTE_MAX,
    WORKER_ID_RE,
    Heartbeat,
    InFlightEntry,
)
from foundry.contracts.host import DiskSample, HostSample, ProcessSample
from foundry.contracts.output import MAX_CHUNK_CHARS, TaskOutput
from foundry.contracts.task import (
    MSG_ID_HEADER,
    SEQ_ID_PREFIX,
    TASK_ID_HINT,
    TASK_ID_RE,
    Task,
    parse_task,
    seq_task_id,
    task_id_from,
    valid_task_id,
)

__all__ = [
    "ACK_SUBJECT_RE",
    "FINAL_STATUSES",
    "MAX_CHUNK_CHARS",
    "MSG_ID_HEADER",
    "PROGRESS_NOTE_MAX",
    "SEQ_ID_PREFIX",
    "TASK_ID_HINT",
    "TASK_ID_RE",
    "WORKER_ID_RE",
    "ControlReply",
    "ControlRequest",
    "ControlVerb",
    "DeadLetter",
    "DeadLetterAction",
    "DiskSample",
    "HealAction",
    "HealEvent",
    "Heartbeat",
    "HostSample",
    "InFlightEntry",
    "MaxDeliveriesAdvisory",
    "MessageRejected",
    "OutputStream",
    "ProcessSample",
    "RelaunchReason",
    "SlotKind",
    "SlotState",
    "StopReason",
    "Task",
    "TaskEvent",
    "TaskOutput",
    "TaskStatus",
    "WorkerControl",
    "WorkerState",
    "parse_task",
    "seq_task_id",
    "task_id_from",
    "valid_task_id",
    "values",
]
