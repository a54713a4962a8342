"""Events on ``agents.events.>`` (captured by the AGENT_EVENTS stream).

- :class:`TaskEvent` on ``events.task.<status>.<type>``: a task changed status.
- :class:`HealEvent` on ``events.heal.<action>``: a decision of the healer. Its
  common fields are typed; the figures of each action (pids, seconds, evidence)
  travel in ``details`` and are flattened into the JSON object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.enums import HealAction, SlotKind, TaskStatus
from foundry.contracts.fields import MAX_TEXT, Reader
from foundry.contracts.heartbeat import HOST_RE, WORKER_ID_RE
from foundry.contracts.task import TASK_ID_RE
from foundry.names import AGENT_TYPE_RE

MAX_EVENT_BYTES = 256 * 1024
MAX_DETAILS = 64
_TIME_MAX = 1e11
_task = Reader("task_event")
_heal = Reader("heal_event")


@dataclass(frozen=True)
class TaskEvent:
    """A task's status change, as workers, the gateway and the healer announce it."""

    status: TaskStatus
    task_id: str
    agent_type: str
    at: float = field(default_factory=time.time)
    worker_id: str | None = None
    attempt: int | None = None
    error: str | None = None
    duration_seconds: float | None = None
    wait_seconds: float | None = None
    duplicate: bool = False
    # a task.queued event of a replayed dead letter names the original task
    replay_of: str | None = None

    @property
    def kind(self) -> str:
        return f"task.{self.status.value}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": self.at,
            "task_id": self.task_id,
            "agent_type": self.agent_type,
            "status": self.status,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "error": self.error,
            "duration_seconds": self.duration_seconds,
            "wait_seconds": self.wait_seconds,
            "duplicate": self.duplicate,
            **({"replay_of": self.replay_of} if self.replay_of is not None else {}),
        }

    def to_payload(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_payload(cls, data: bytes) -> TaskEvent:
        body = _task.object(data, MAX_EVENT_BYTES)
        return cls(
            status=_task.enum(body, "status", TaskStatus),
            task_id=_task.string(body, "task_id", pattern=TASK_ID_RE),
            agent_type=_task.string(body, "agent_type", pattern=AGENT_TYPE_RE),
            at=_task.number(body, "at", high=_TIME_MAX),
            worker_id=_task.string(body, "worker_id", required=False, pattern=WORKER_ID_RE),
            attempt=_task.integer(body, "attempt", required=False, low=1, high=10**6),
            error=_task.string(body, "error", required=False, max_len=MAX_TEXT * 4),
            duration_seconds=_task.number(body, "duration_seconds", required=False),
            wait_seconds=_task.number(body, "wait_seconds", required=False),
            duplicate=_task.boolean(body, "duplicate", required=False),
            replay_of=_task.string(body, "replay_of", required=False, pattern=TASK_ID_RE),
        )


_HEAL_KEYS = frozenset(
    {"kind", "at", "host", "slot", "slot_kind", "agent_type", "worker_id", "reason"}
)


@dataclass(frozen=True)
class HealEvent:
    """One decision of a healer, with the figures that explain it in ``details``."""

    action: HealAction
    host: str
    at: float = field(default_factory=time.time)
    slot: str | None = None
    slot_kind: SlotKind | None = None
    agent_type: str | None = None
    worker_id: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"heal.{self.action.value}"

    def to_json(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.details.items() if k not in _HEAL_KEYS}
        return {
            "kind": self.kind,
            "at": self.at,
            "host": self.host,
            "slot": self.slot,
            "slot_kind": self.slot_kind,
            "agent_type": self.agent_type,
            "worker_id": self.worker_id,
            "reason": self.reason,
            **extra,
        }

    def to_payload(self) -> bytes:
        return codec.dumps(self.to_json())

    def number(self, key: str) -> float | None:
        """A finite, non-negative figure from ``details``, else None."""
        value = self.details.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if 0 <= value < 1e15 else None

    def text(self, key: str) -> str | None:
        value = self.details.get(key)
        return value if isinstance(value, str) else None

    @classmethod
    def from_payload(cls, data: bytes) -> HealEvent:
        body = _heal.object(data, MAX_EVENT_BYTES)
        details = {k: v for k, v in body.items() if k not in _HEAL_KEYS}
        if len(details) > MAX_DETAILS:
            raise _heal.reject("size", f"{len(details)} detail fields, over {MAX_DETAILS}")
        kind = _heal.string(body, "kind", max_len=64)
        prefix, _, action = kind.partition(".")
        if prefix != "heal":
            raise _heal.reject("enum", f"'kind'={kind!r} is not heal.<action>")
        return cls(
            action=_heal.enum({"action": action}, "action", HealAction),
            host=_heal.string(body, "host", pattern=HOST_RE),
            at=_heal.number(body, "at", high=_TIME_MAX),
            slot=_heal.string(body, "slot", required=False, pattern=WORKER_ID_RE),
            slot_kind=_heal.enum(body, "slot_kind", SlotKind, required=False),
            agent_type=_heal.string(body, "agent_type", required=False, max_len=64),
            worker_id=_heal.string(body, "worker_id", required=False, pattern=WORKER_ID_RE),
            reason=_heal.string(body, "reason", required=False),
            details=details,
        )
