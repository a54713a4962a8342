"""Slots and the restart policy.

A slot is one supervised process the fleet should have: a worker ``(type,
index)`` with the stable worker id ``<type>-<index>``, a service (gateway,
monitor) or an embedded server. The policy decides, after each death, how long
to wait before the relaunch and whether the slot is quarantined instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry.contracts import SlotKind, SlotState, StopReason


@dataclass
class Death:
    at: float  # monotonic
    exit_code: int | None
    signal: int | None
    ran_for: float
    task_ids: frozenset[str] = frozenset()
    excused: bool = False  # caused by a poison task: counts neither for backoff nor quarantine


@dataclass
class RestartPolicy:
    """Backoff between consecutive relaunches; quarantine on too many deaths in a window."""

    max_restarts: int
    window: float
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    stable_after: float = 30.0

    def counted(self, deaths: deque[Death], now: float) -> list[Death]:
        return [d for d in deaths if now - d.at <= self.window]

    def should_quarantine(self, deaths: deque[Death], now: float) -> bool:
        return len(self.counted(deaths, now)) > self.max_restarts

    def delay(self, consecutive: int) -> float:
        """0 for the first relaunch, then base, 2*base, 4*base ... capped."""
        if consecutive <= 1:
            return 0.0
        doublings = min(consecutive - 2, 64)  # past 2**64 the cap has long been reached
        return float(min(self.backoff_max, self.backoff_base * 2**doublings))


@dataclass
class Slot:
    """One supervised process and its history."""

    name: str
    kind: SlotKind
    command: list[str]
    agent_type: str | None = None
    index: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int | None = None  # where an embedded server listens
    # Written only by healer.transitions.move (called by the supervisor).
    state: SlotState = SlotState.STOPPED
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    launched_at: float = 0.0  # monotonic
    launches: int = 0
    consecutive: int = 0  # deaths since the last stable run
    deaths: deque[Death] = field(default_factory=lambda: deque(maxlen=64))
    pending_reason: StopReason | None = None  # why the healer is stopping it
    silent_seconds: float | None = None  # how long it had been silent when we killed it
    quarantine_reason: str | None = None
    last_error: str | None = None
    relaunch_handle: asyncio.TimerHandle | None = None
    waiter: asyncio.Task[Any] | None = None

    @property
    def is_worker(self) -> bool:
        return self.kind is SlotKind.WORKER

    def ran_for(self) -> float:
        return time.monotonic() - self.launched_at if self.launched_at else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.name,
            "kind": self.kind,
            "agent_type": self.agent_type,
            "worker_id": self.name if self.is_worker else None,
            "state": self.state,
            "pid": self.pid if self.state in _ALIVE else None,
            "launches": self.launches,
            "restarts": max(0, self.launches - 1),
            "consecutive_failures": self.consecutive,
            "quarantine_reason": self.quarantine_reason,
            "last_error": self.last_error,
            "uptime_seconds": round(self.ran_for(), 3) if self.state is SlotState.RUNNING else 0.0,
        }


_ALIVE = frozenset({SlotState.STARTING, SlotState.RUNNING, SlotState.STOPPING})
