"""Handler API: what a worker runs for a task.

A handler is an async callable ``handler(ctx: TaskContext) -> result`` whose
result is JSON-serialisable. Raise :class:`RetryableError` to have the task
redelivered after a delay; raise :class:`TaskFailed` to fail it with a message
and a result; any other exception fails the task with its message.

A handler may also have lifecycle hooks (:class:`HandlerLifecycle`): the
worker awaits ``setup(settings)`` once before it fetches its first task and
``close()`` once after its last, when it drains or stops. Both are optional;
:class:`BaseHandler` provides no-op ones. Hooks are where per-worker resources
live (an HTTP session kept across tasks, a checked tool); a plain async
function handler has none and works as before.

The built-in handlers live in :mod:`workers.builtin`; :mod:`workers.registry`
binds agent types to handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    # Who submitted the task, as the gateway stated it in the payload's ``submitted_by``.
    submitted_by: str | None = None
    _emit: Callable[[str | bytes, str], Awaitable[None]] | None = field(default=None, repr=False)

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

    async def emit(self, chunk: str | bytes, stream: str = "text") -> None:
        """Stream a piece of output as the task runs: ``stream`` is ``text`` (default),
        ``stdout`` or ``stderr``.

        Watchers of ``GET /api/cluster/task/{id}/stream`` see it at once, tagged with
        this attempt; it is also kept with the result (up to FOUNDRY_OUTPUT_MAX_BYTES
        per attempt). Outside a worker (no emitter) it does nothing.
        """
        if self._emit is not None:
            await self._emit(chunk, stream)


class Handler(Protocol):
    def __call__(self, ctx: TaskContext) -> Awaitable[Any]: ...


@runtime_checkable
class HandlerLifecycle(Protocol):
    """The optional hooks a handler object may have (both async)."""

    async def setup(self, settings: Settings) -> None: ...

    async def close(self) -> None: ...


class BaseHandler:
    """A handler object with no-op lifecycle hooks: subclass it and implement ``__call__``."""

    async def setup(self, settings: Settings) -> None:
        """Called once per worker before its first task: open sessions, check tools."""

    async def close(self) -> None:
        """Called once per worker after its last task: release what ``setup`` opened."""

    async def __call__(self, ctx: TaskContext) -> Any:
        raise NotImplementedError


async def setup_handler(handler: Handler, settings: Settings) -> None:
    """Await the handler's ``setup`` hook, if it has one."""
    hook = getattr(handler, "setup", None)
    if hook is not None:
        await hook(settings)


async def close_handler(handler: Handler) -> None:
    """Await the handler's ``close`` hook, if it has one."""
    hook = getattr(handler, "close", None)
    if hook is not None:
        await hook()


async def echo(ctx: TaskContext) -> Any:
    """Return what the task carried: for smoke tests and benchmarks."""
    return {"description": ctx.description, "input": ctx.input, "agent_type": ctx.agent_type}
