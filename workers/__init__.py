"""Worker processes: one process serves one agent type (``python -m workers --type T``)."""

from __future__ import annotations

from workers.handlers import Handler, RetryableError, TaskContext, TaskFailed
from workers.registry import resolve_handler

__all__ = ["Handler", "RetryableError", "TaskContext", "TaskFailed", "resolve_handler"]
