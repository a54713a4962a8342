"""The vocabularies every message uses: task statuses, worker and slot states, reasons, actions.

Producers build messages from these enums, consumers validate against them,
and the monitor's label sets are derived from them, so a value cannot exist
on one side only.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is: its record in Redis and the token in ``events.task.<status>``."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"  # delayed: not to start before its not_before
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED}
)


class TaskPriority(StrEnum):
    """A task's lane within its type: ``high`` is taken before ``normal``, ``normal`` before
    ``low``. The normal lane is the plain ``agents.tasks.<type>`` subject."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class WorkerState(StrEnum):
    """What a worker says it is doing, in its heartbeat."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"


class SlotKind(StrEnum):
    """What a supervised slot runs."""

    WORKER = "worker"
    SERVICE = "service"
    SERVER = "server"


class SlotState(StrEnum):
    """The supervisor's state of one slot (see ``healer.transitions``)."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"


class StopReason(StrEnum):
    """Why the healer stops a process it supervises."""

    STOP = "stop"  # shutdown: no relaunch
    SILENT = "silent"  # no heartbeat within the silence timeout
    RECYCLE = "recycle"  # over its memory limit: drained and replaced
    UNREACHABLE = "unreachable"  # an embedded server that stopped answering


class RelaunchReason(StrEnum):
    """Why a slot was launched again: the ``reason`` of a ``heal.relaunch`` event."""

    EXIT = "exit"
    SILENT = "silent"
    RECYCLE = "recycle"
    UNREACHABLE = "unreachable"
    SPAWN_ERROR = "spawn-error"
    MANUAL = "manual"
    RELEASE = "release"


class HealAction(StrEnum):
    """The decisions the healer publishes on ``events.heal.<action>``."""

    RELAUNCH = "relaunch"
    KILL_SILENT = "kill_silent"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    POISON = "poison"
    DEAD_LETTER = "dead_letter"
    REMEDIATE = "remediate"
    SILENT_FOREIGN = "silent_foreign"
    AUDIT = "audit"
    SCALE = "scale"  # a type's worker count changed with its backlog, or could not
    LEADER = "leader"  # a process took a leader lease (healer, monitor, orchestrator)


class DeadLetterAction(StrEnum):
    """How a task reached the dead letter stream."""

    POISON = "poison"  # in flight at too many worker deaths
    MAX_DELIVER = "max_deliver"  # delivered max_deliver times without an ack
    UNSERVED = "unserved"  # no fleet serves its type


class OutputStream(StrEnum):
    """Which stream a chunk of a task's streamed output came from (``TaskOutput.stream``)."""

    STDOUT = "stdout"
    STDERR = "stderr"
    TEXT = "text"  # anything else a handler emits, e.g. an LLM's tokens


class ControlVerb(StrEnum):
    """Requests the healer answers on ``agents.control.<verb>``."""

    PING = "ping"
    STATUS = "status"
    HEAL = "heal"
    RELEASE = "release"
    CANCEL = "cancel"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The enum's values, in declaration order (for label sets and documents)."""
    return tuple(member.value for member in enum)
