"""Handler API: what a worker runs for a task.

A handler is an async callable ``handler(ctx: TaskContext) -> result`` whose
result is JSON-serialisable. Raise :class:`RetryableError` to have the task
redelivered after a delay; raise :class:`TaskFailed` to fail it with a message
and a result; any other exception fails the task with its message.

The built-in handlers live in :mod:`workers.builtin`; :mod:`workers.registry`
binds agent types to handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from foundry.settings import Settings


class RetryableError(Exception):
    """The task should be tried again after ``delay`` seconds (None: the configured delay)."""

    def __init__(self, message: str = "", delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class TaskFailed(Exception):
    """The task failed for a reason the handler understood: ``message`` and ``result`` are stored.

    Unlike other exceptions the error is stored as the message alone (no exception
    type), and ``result`` (JSON-serialisable, e.g. partial output) is kept beside it.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class TaskContext:
    """What a handler receives."""

    task_id: str
    agent_type: str
    description: str
    input: Any
    attempt: int
    worker_id: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # The worker's settings: built-in handlers read their FOUNDRY_* configuration here.
    settings: Settings = field(default_factory=Settings, repr=False)
    _progress: Callable[[str | None], Awaitable[None]] | None = field(default=None, repr=False)
    last_progress: str | None = None

    async def progress(self, note: str | None = None) -> None:
        """Tell the cluster this task is alive: extends the JetStream lease, shows in heartbeats.

        ``note`` (short text, e.g. ``"step 2 of 5"``) replaces the previous note;
        ``None`` keeps it. Cheap enough to call per streamed token: the worker
        rate-limits the lease extensions it sends.
        """
        if note is not None:
            self.last_progress = note
        if self._progress is not None:
            await self._progress(note)


class Handler(Protocol):
    def __call__(self, ctx: TaskContext) -> Awaitable[Any]: ...


async def echo(ctx: TaskContext) -> Any:
    """Return what the task carried: for smoke tests and benchmarks."""
    return {"description": ctx.description, "input": ctx.input, "agent_type": ctx.agent_type}
