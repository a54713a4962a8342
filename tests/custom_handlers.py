"""Handlers for the handler-API tests, bound by dotted path (``tests.custom_handlers:<name>``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from workers.handlers import TaskContext, TaskFailed


async def stepwise(ctx: TaskContext) -> dict[str, Any]:
    """Report progress, hold until ``input.release`` exists (at most 60 s), report again."""
    await ctx.progress("step 1 of 2")
    release = Path(ctx.input["release"])
    for _ in range(1200):
        if await asyncio.to_thread(release.exists):
            break
        await asyncio.sleep(0.05)
    await ctx.progress("step 2 of 2")
    return {
        "task_id": ctx.task_id,
        "agent_type": ctx.agent_type,
        "description": ctx.description,
        "attempt": ctx.attempt,
        "worker_id": ctx.worker_id,
        "last_progress": ctx.last_progress,
        "namespace": ctx.settings.namespace,
        "exec_timeout": ctx.settings.exec.timeout,
    }


async def fail_with_result(ctx: TaskContext) -> Any:
    raise TaskFailed("the report is incomplete", result={"partial": [1, 2]})


def not_async(ctx: TaskContext) -> Any:
    return {"sync": True}
