"""Handler API: what a worker runs for a task, and the registry from agent type to handler.

A handler is an async callable ``handler(ctx: TaskContext) -> result`` whose
result is JSON-serialisable. Raise :class:`RetryableError` to have the task
redelivered after a delay; any other exception fails the task with its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class RetryableError(Exception):
    """The task should be tried again after ``delay`` seconds (None: the configured delay)."""

    def __init__(self, message: str = "", delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


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
    _progress: Callable[[str | None], Awaitable[None]] | None = field(default=None, repr=False)
    last_progress: str | None = None

    async def progress(self, note: str | None = None) -> None:
        """Tell the cluster this task is alive: extends the JetStream lease, shows in heartbeats."""
        self.last_progress = note
        if self._progress is not None:
            await self._progress(note)


class Handler(Protocol):
    def __call__(self, ctx: TaskContext) -> Awaitable[Any]: ...


async def echo(ctx: TaskContext) -> Any:
    """Return what the task carried: for smoke tests and benchmarks."""
    return {"description": ctx.description, "input": ctx.input, "agent_type": ctx.agent_type}


BUILTIN_HANDLERS: dict[str, Handler] = {"echo": echo}
